"""The service's use cases, for every door: run, look up, list, cancel, kill, delete files, tools.

Each operation takes who asks (a :class:`~fluxhost.auth.Caller`) and typed inputs, and returns
typed results or raises an :class:`OperationError` saying why not. Doors parse their requests,
authenticate, call one operation and render its result in their own shape, wording refusals
their own way. Operations block on the database (and Run on DNS): doors call them off the event
loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fluxhost.auth import Caller
from fluxhost.dispatch import Dispatcher
from fluxhost.events import EventBus, TaskEvent
from fluxhost.files import FileStore
from fluxhost.inputs import InputError, ValidatedRun
from fluxhost.statuses import Status
from fluxhost.store.tasks import ModelStats, StopResult, TaskRecord, TaskRef, TaskStore
from fluxhost.tools import Catalog, Tool
from fluxhost.urlguard import Allowlist, UrlRefused, check_public_url

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
    ):
        """``load_error(slug)``: why that model could not be loaded here, or None; ``upsampling``:
        whether a prompt upsampler is configured."""
        self.load_error = load_error
        self.upsampling = upsampling
        self.tasks = tasks
        self.files = files
        self.events = events
        self.dispatcher = dispatcher
        self.catalog = catalog
        self.url_allowlist = url_allowlist

    # --- running ------------------------------------------------------------------------

    def prepare_run(self, owner: str, project: str, inputs: dict[str, Any], callback_url: str = "") -> RunOrder:
        """Check a Run without queuing anything: the model, its inputs, the callback URL (whose host
        is resolved: this blocks)."""
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
        if validated.order.prompt_upsampling and not self.upsampling:
            raise InvalidInput(UPSAMPLING_UNAVAILABLE)
        if callback_url:
            try:
                check_public_url(callback_url, self.url_allowlist, "callbackUrl")
            except UrlRefused as error:
                raise InvalidInput(str(error)) from None
        return RunOrder(tool, validated, callback_url)

    def run(self, caller: Caller, order: RunOrder) -> TaskRef:
        """Queue a checked Run: the task row, its ``task_queue`` event, a worker woken."""
        task = self.tasks.create(
            caller.project_id,
            order.tool.slug,
            parameters=order.validated.parameters,
            request=order.validated.order.encode(),
            callback_url=order.callback_url,
        )
        self.events.publish(TaskEvent(task.id, task.socket_token, Status.QUEUE))
        self.dispatcher.notify()
        return task

    # --- tasks --------------------------------------------------------------------------

    def find(self, caller: Caller, *, task_id: int | None = None, token: str | None = None) -> TaskRecord:
        """One of the caller's tasks, by id or socket token."""
        task = self.tasks.find(caller.project_id, task_id=task_id, token=token)
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
        return self.tasks.get(task.row.id)

    def delete_files(self, caller: Caller, task: TaskRecord) -> None:
        """Remove an ended task's files; the record stays. Deleting twice is fine."""
        if task.row.project_id != caller.project_id:
            raise TaskNotFound()
        if not task.ended:
            raise TaskNotEnded()
        for output in self.tasks.delete_outputs(task.row.id):
            self.files.delete(output.folder, output.name)

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
