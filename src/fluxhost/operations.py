"""The service's use cases, for every door: run, look up, list, cancel, kill, delete files, tools.

Each operation takes who asks (a :class:`~fluxhost.auth.Caller`) and typed inputs, and returns
typed results or raises an :class:`OperationError` saying why not. Doors parse their requests,
authenticate, call one operation and render its result in their own shape, wording refusals
their own way. Operations block on the database (and Run on DNS): doors call them off the event
loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from fluxhost.auth import Caller
from fluxhost.dispatch import Dispatcher
from fluxhost.events import EventBus, TaskEvent
from fluxhost.image_inputs import DEFAULT_LIMITS, ImageLimits, ImageRefused, InputImage, decode, fetch, size_like
from fluxhost.inputs import InputError, ValidatedRun
from fluxhost.limits import NO_TASK_LIMITS, TaskLimits
from fluxhost.statuses import Status
from fluxhost.storage import FileStore
from fluxhost.store.tasks import ModelStats, StopResult, TaskRecord, TaskRef, TaskStore
from fluxhost.tools import Catalog, Tool
from fluxhost.tracing import context_carrier, current_span
from fluxhost.urlguard import Allowlist, UrlRefused, check_public_url
from fluxhost.workorder import FileRef

log = logging.getLogger(__name__)

UPSAMPLING_UNAVAILABLE = (
    "Prompt upsampling is not available on this server: its operator can set FLUXHOST_UPSAMPLER_URL (an "
    "OpenAI-compatible API) or FLUXHOST_UPSAMPLER_LOCAL (a transformers language model). Send "
    "promptUpsampling=false to use the prompt as given."
)


class OperationError(Exception):
    """A request the service refuses; the subclass says why."""


class UnknownModel(OperationError):
    """No served model has that slug."""


class ModelUnavailable(OperationError):
    """The model is served but could not be loaded; ``str(error)`` says why and what to change."""


class InvalidInput(OperationError):
    """An input the tool refuses; ``str(error)`` says which and why, in the protocol's words."""


class TooManyTasks(OperationError):
    """A Run over a limit on unfinished tasks (the key's, the project's, the model's queue);
    ``str(error)`` says which."""


class TaskNotFound(OperationError):
    """No task by that id or token in the caller's project."""


class NotCancellable(OperationError):
    """Cancel of a task a worker has already claimed (or that has ended)."""


class NotKillable(OperationError):
    """Kill of a task that has already ended."""


class TaskNotEnded(OperationError):
    """Deleting the files of a task that is still queued or running."""


@dataclass(frozen=True)
class RunOrder:
    """A Run that passed every check and is ready to be queued."""

    tool: Tool
    validated: ValidatedRun
    callback_url: str = ""
    image: InputImage | None = None


@dataclass(frozen=True)
class Upload:
    """A file a caller stored for later Runs."""

    id: str
    name: str
    content_type: str
    size: int
    url: str
    added_at: float


@dataclass(frozen=True)
class TaskQuery:
    """A page of the caller's tasks: ``sort`` is ``id``, ``createtime`` or ``status``;
    ``model_name`` keeps tasks whose model slug contains it."""

    start: int = 0
    limit: int = 20
    newest_first: bool = True
    sort: str = "id"
    model_name: str = ""


@dataclass(frozen=True)
class TaskPage:
    total: int
    tasks: list[TaskRecord]


class Operations:
    def __init__(
        self,
        tasks: TaskStore,
        files: FileStore,
        events: EventBus,
        dispatcher: Dispatcher,
        catalog: Catalog,
        url_allowlist: Allowlist,
        load_error: Callable[[str], str | None] = lambda _slug: None,
        upsampling: bool = False,
        image_limits: ImageLimits = DEFAULT_LIMITS,
        task_limits: TaskLimits = NO_TASK_LIMITS,
    ):
        """``load_error(slug)``: why that model could not be loaded here, or None; ``upsampling``:
        whether a prompt upsampler is configured."""
        self.task_limits = task_limits
        self.load_error = load_error
        self.upsampling = upsampling
        self.image_limits = image_limits
        self.tasks = tasks
        self.files = files
        self.events = events
        self.dispatcher = dispatcher
        self.catalog = catalog
        self.url_allowlist = url_allowlist

    # --- running ------------------------------------------------------------------------

    def prepare_run(self, owner: str, project: str, inputs: dict[str, Any], callback_url: str = "",
                    size: tuple[int, int] | None = None, num_images: int = 1) -> RunOrder:
        """Check a Run without queuing anything: the model, its inputs, the callback URL (whose host
        is resolved: this blocks). ``size``: width and height in pixels, and ``num_images``: images
        of one task, for doors whose clients ask for them (checked there: multiples of 32, a few)."""
        tool = self.catalog.find(owner, project)
        if tool is None:
            raise UnknownModel(f"{owner}/{project}")
        problem = self.load_error(tool.slug)
        if problem:
            raise ModelUnavailable(f"Model {tool.slug} is not available on this server: {problem}")
        try:
            validated = tool.schema.validate(inputs)
        except InputError as error:
            raise InvalidInput(str(error)) from None
        image = None
        if tool.schema.takes_image:
            try:
                image = self.input_image(inputs)
            except ImageRefused as error:
                raise InvalidInput(str(error)) from None
            if not validated.order.aspect_ratio:
                width, height = size_like(image.image)
                validated = replace(validated, order=validated.order.model_copy(update={"width": width,
                                                                                      "height": height}))
        if size is not None:
            validated = replace(validated, order=validated.order.model_copy(update={"width": size[0],
                                                                                  "height": size[1]}))
        if num_images != 1:
            validated = replace(validated, order=validated.order.model_copy(update={"num_images": num_images}))
        if validated.order.prompt_upsampling and not self.upsampling:
            raise InvalidInput(UPSAMPLING_UNAVAILABLE)
        if callback_url:
            try:
                check_public_url(callback_url, self.url_allowlist, "callbackUrl")
            except UrlRefused as error:
                raise InvalidInput(str(error)) from None
        return RunOrder(tool, validated, callback_url, image)

    def admit(self, caller: Caller, model_slug: str) -> None:
        """Refuse (:class:`TooManyTasks`) a Run that would pass a limit on unfinished tasks, before
        its inputs cost anything. Checked, not reserved: Runs arriving together may pass a limit
        by a few."""
        if not self.task_limits.any:
            return
        counts = self.tasks.unfinished_for_run(caller.key_id, caller.project_id, model_slug)
        if refusal := counts.refusal(self.task_limits, model_slug):
            raise TooManyTasks(refusal)

    def input_image(self, inputs: dict[str, Any]) -> InputImage:
        """The Run's input image: uploaded bytes, a file this server stored, or a URL fetched through
        the SSRF guard (this blocks)."""
        parameter = "inputImage" if inputs.get("inputImage") else "inputImageUrl"
        value = inputs[parameter]
        return decode(value if isinstance(value, bytes) else self._bytes_at(str(value).strip(), parameter),
                      parameter, self.image_limits)

    def _bytes_at(self, url: str, parameter: str) -> bytes:
        own = self.files.find(url)
        if own is None:
            return fetch(url, parameter, self.url_allowlist, self.image_limits)
        data = self.files.read(*own)
        if data is None:
            raise ImageRefused(f"Request parameter [{parameter}] names a file this server no longer has")
        return data

    def run(self, caller: Caller, order: RunOrder) -> TaskRef:
        """Queue a checked Run: its input image kept, the task row, its ``task_queue`` event, a
        worker woken."""
        with current_span("fluxhost.run", **{"fluxhost.model": order.tool.slug}) as span:
            task = self._queue(caller, order)
            if span is not None:
                span.set_attribute("fluxhost.task_id", task.id)
            return task

    def _queue(self, caller: Caller, order: RunOrder) -> TaskRef:
        work, parameters = order.validated.order, dict(order.validated.parameters)
        if carrier := context_carrier():
            work = work.model_copy(update={"trace": carrier})
        if order.image is not None:
            folder, name = self.files.new_folder(), f"input-0.{order.image.extension}"
            self.files.save(folder, name, order.image.data)
            stored = FileRef(folder=folder, name=name, content_type=order.image.content_type,
                             size=len(order.image.data))
            work = work.model_copy(update={"input_images": (stored,)})
            parameters.setdefault("inputImage", self.files.url(folder, name))
        task = self.tasks.create(
            caller.project_id,
            order.tool.slug,
            parameters=parameters,
            request=work.encode(),
            callback_url=order.callback_url,
            api_key_id=caller.key_id,
        )
        self.events.publish(TaskEvent(task.id, task.socket_token, Status.QUEUE))
        log.info("task %s task_queue (%s, project %s)", task.id, order.tool.slug, caller.project_id,
                 extra={"task_id": task.id, "status": Status.QUEUE.value})
        self.dispatcher.notify(task.id, order.tool.slug)
        return task

    def upload(self, caller: Caller, image: InputImage) -> Upload:
        """Keep a checked image; its URL is a capability (as output URLs are) that a later Run
        takes as ``inputImage`` or ``inputImageUrl``."""
        folder, name = self.files.new_folder(), f"upload.{image.extension}"
        self.files.save(folder, name, image.data)
        log.info("project %s uploaded %s bytes", caller.project_id, len(image.data))
        return Upload(folder[:32], name, image.content_type, len(image.data), self.files.url(folder, name),
                      time.time())

    # --- tasks --------------------------------------------------------------------------

    def find(self, caller: Caller, *, task_id: int | None = None, token: str | None = None,
             uuid: str | None = None) -> TaskRecord:
        """One of the caller's tasks, by id, socket token or uuid."""
        task = self.tasks.find(caller.project_id, task_id=task_id, token=token, uuid=uuid)
        if task is None:
            raise TaskNotFound()
        return task

    def list(self, caller: Caller, query: TaskQuery) -> TaskPage:
        total, found = self.tasks.list(
            caller.project_id, start=query.start, limit=query.limit, newest_first=query.newest_first,
            sort=query.sort, model_name=query.model_name,
        )
        return TaskPage(total, found)

    def cancel(self, caller: Caller, task: TaskRecord) -> TaskRecord:
        """Cancel a queued task: it will never run."""
        return self._stop(caller, task, kill=False)

    def kill(self, caller: Caller, task: TaskRecord) -> TaskRecord:
        """Stop a queued or running task; a running generation stops at its next step."""
        return self._stop(caller, task, kill=True)

    def _stop(self, caller: Caller, task: TaskRecord, kill: bool) -> TaskRecord:
        stop = self.tasks.kill if kill else self.tasks.cancel
        result = stop(caller.project_id, task.row.id)
        if result is StopResult.NOT_FOUND:
            raise TaskNotFound()
        if result is StopResult.NOT_STOPPABLE:
            raise NotKillable() if kill else NotCancellable()
        self.events.publish(TaskEvent(task.row.id, task.row.socket_token, Status.CANCEL))
        log.info("task %s task_cancel (%s)", task.row.id, "killed" if kill else "cancelled",
                 extra={"task_id": task.row.id, "status": Status.CANCEL.value})
        return self.tasks.get(task.row.id)

    def delete_files(self, caller: Caller, task: TaskRecord) -> None:
        """Remove an ended task's files; the record stays. Deleting twice is fine."""
        if task.row.project_id != caller.project_id:
            raise TaskNotFound()
        if not task.ended:
            raise TaskNotEnded()
        for output in self.tasks.delete_outputs(task.row.id):
            self.files.delete(output.folder, output.name)
        for stored in self.tasks.forget_inputs(task.row.id):
            self.files.delete(stored["folder"], stored["name"])

    # --- tools --------------------------------------------------------------------------

    def tool(self, owner: str, project: str) -> Tool:
        tool = self.catalog.find(owner, project)
        if tool is None:
            raise UnknownModel(f"{owner}/{project}")
        return tool

    def tools(self, search: str = "", owner: str = "", categories: frozenset[str] = frozenset()) -> list[Tool]:
        """The served tools matching every word of ``search``, of ``owner``, in any of ``categories``."""
        return [
            tool for tool in self.catalog.tools
            if tool.matches(search)
            and (not owner or tool.owner.lower() == owner.lower())
            and (not categories or bool(categories & set(tool.categories)))
        ]

    def tool_stats(self) -> dict[str, ModelStats]:
        """What this server measured of each tool's runs."""
        return self.tasks.model_stats()
