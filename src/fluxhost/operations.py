"""The service's use cases, for every door: who asks, run, look up, list, cancel, kill, delete
files, uploads (keep, list, delete, expire), tools.

Each operation takes who asks (a :class:`~fluxhost.auth.Caller`) and typed inputs, and returns
typed results or raises an :class:`OperationError` saying why not, in no door's words. Doors parse
their requests into those inputs, call one operation and render its result in their own shape,
wording refusals their own way. Operations block on the database (and Run on DNS): doors call
them off the event loop.
"""

from __future__ import annotations

import errno
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxhost.archives import ArchiveRefused, is_zip
from fluxhost.archives import members as archive_members
from fluxhost.auth import Authenticator, Caller
from fluxhost.events import EventBus, TaskEvent
from fluxhost.input_images import DEFAULT_LIMITS, ImageLimits, ImageRefused, InputImage, decode, fetch, size_like
from fluxhost.limits import NO_TASK_LIMITS, NoRequestRate, RequestRate, TaskLimits
from fluxhost.loras import SAFETENSORS_SUFFIX, SAFETENSORS_TYPE, is_safetensors, library_file
from fluxhost.orders import (
    ASPECT_RATIOS,
    SEED_MAX,
    FileRef,
    LoraRef,
    RunRequest,
    Training,
    TrainingImage,
    TrainingRequest,
    WorkOrder,
    size_for_aspect_ratio,
)
from fluxhost.runtime.dispatch import Dispatcher
from fluxhost.statuses import Status
from fluxhost.storage import FileStore
from fluxhost.store.records import OutputView, TaskView
from fluxhost.store.tasks import ModelStats, StopResult, TaskRef, TaskStore
from fluxhost.store.uploads import FolderView, NewUpload, UploadStore, UploadView
from fluxhost.tools import Catalog, Tool
from fluxhost.tracing import context_carrier, current_span
from fluxhost.training_sets import (
    ARCHIVE_MAX_MEMBERS,
    CAPTION_SUFFIX,
    CAPTION_TYPE,
    Picture,
    TrainingSetRefused,
    TrainingSets,
    caption_text,
)
from fluxhost.urlguard import Allowlist, UrlRefused, check_public_url

log = logging.getLogger(__name__)

PROMPT_MAX_CHARS = 10_000
DEFAULT_ASPECT_RATIO = "16:9"  # a text-to-image Run that asks for no size
DEFAULT_UPSCALE = 2.0  # an upscale Run that asks for no factor
UPLOAD_NAME_MAX_CHARS = 200
FOLDER_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic")
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # the disk, or the service's share of it, is full


class OperationError(Exception):
    """A request the service refuses; the subclass says why."""


class UnknownModel(OperationError):
    """No served model has that slug."""


class ModelUnavailable(OperationError):
    """The model is served but could not be loaded; ``str(error)`` says why and what to change."""


class InvalidInput(OperationError):
    """An input the service refuses: ``field`` names it as :class:`~fluxhost.orders.RunRequest`
    does (``input_image``, ``callback_url``; ``upload`` for File/Upload's file), ``problem`` says
    what is wrong as a predicate of it ("is larger than 20 MB"). Doors name the field their way."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


class UpsamplingUnavailable(OperationError):
    """A Run asks for prompt upsampling and this server has no upsampler."""

    def __init__(self) -> None:
        super().__init__("Prompt upsampling is not available on this server: its operator can set "
                         "FLUXHOST_UPSAMPLER_URL (an OpenAI-compatible API) or FLUXHOST_UPSAMPLER_LOCAL (a "
                         "transformers "
                         "language model).")


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


class UploadNotFound(OperationError):
    """No upload by that id in the caller's project."""


class UploadInUse(OperationError):
    """An upload a task that has not ended reads (a training's picture, a private LoRA adapter)."""

    def __init__(self, task_id: int):
        super().__init__(f"task {task_id} reads it and has not ended")
        self.task_id = task_id


class UploadQuotaExceeded(OperationError):
    """An upload that would take its project's uploads past the quota."""

    def __init__(self, quota_bytes: int, used_bytes: int, size: int):
        super().__init__(f"{size} more bytes would pass the quota of {quota_bytes} ({used_bytes} in use)")
        self.quota_bytes = quota_bytes
        self.used_bytes = used_bytes
        self.size = size


class StorageFailed(OperationError):
    """The file store failed to ``action`` (store, read or delete) a file (``no_room``: the disk is
    full); nothing of a file being stored was kept. ``str(error)`` names the OS's error, not the
    file: its path holds the URL's secret part."""

    def __init__(self, error: OSError, action: str):
        super().__init__(f"the file store failed to {action} a file: {error_name(error)}")
        self.action = action
        self.no_room = error.errno in NO_ROOM_ERRNOS


def error_name(error: OSError) -> str:
    """The OS's name of the error (ENOSPC), or its type's: never its text, which may hold the
    file's path (the secret part of its URL)."""
    return errno.errorcode.get(error.errno or 0, type(error).__name__)


@contextmanager
def file_store(action: str) -> Iterator[None]:
    """The file store's failures while it does ``action`` (a full disk, an object store out of
    reach) as :class:`StorageFailed`."""
    try:
        yield
    except OSError as error:
        failure = StorageFailed(error, action)
        log.warning("%s", failure)
        raise failure from error


@dataclass(frozen=True)
class UploadPage:
    total: int
    uploads: list[UploadView]


def shown_name(sent: str, extension: str) -> str:
    """An uploaded file's name as its client sent it, made fit to show: its last path part, any
    run of white space one space, without control or invisible characters (a right-to-left
    override can disguise an extension), at most :data:`UPLOAD_NAME_MAX_CHARS` characters;
    ``upload.<extension>`` when nothing is left. Only ever shown, never used as a path."""
    last = unicodedata.normalize("NFC", sent.replace("\\", "/").rsplit("/", 1)[-1])
    spaced = " ".join(last.split())
    visible = "".join(char for char in spaced if unicodedata.category(char)[0] != "C")
    name = " ".join(visible.split())[:UPLOAD_NAME_MAX_CHARS].strip()
    return name if name.strip(".") else f"upload.{extension}"


@dataclass(frozen=True)
class TaskQuery:
    """A page of the caller's tasks: ``sort`` is ``id``, ``createtime`` or ``status``;
    ``model_name`` keeps tasks whose model slug contains it, ``search`` those whose prompt contains it
    (ignoring case)."""

    start: int = 0
    limit: int = 20
    newest_first: bool = True
    sort: str = "id"
    model_name: str = ""
    search: str = ""


@dataclass(frozen=True)
class TaskPage:
    total: int
    tasks: list[TaskView]


class Operations:
    def __init__(
        self,
        auth: Authenticator,
        tasks: TaskStore,
        uploads: UploadStore,
        files: FileStore,
        events: EventBus,
        dispatcher: Dispatcher,
        catalog: Catalog,
        url_allowlist: Allowlist,
        *,
        request_rate: RequestRate | None = None,
        upsampling: bool = False,
        image_limits: ImageLimits = DEFAULT_LIMITS,
        task_limits: TaskLimits = NO_TASK_LIMITS,
        max_prompt_chars: int = PROMPT_MAX_CHARS,
        upload_quota_bytes: int = 0,
        upload_expiry_seconds: int = 0,
        lora_dir: Path | None = None,
        lora_max_bytes: int = 0,
        archive_max_bytes: int = 1_000_000_000,
        training_max_images: int = 1000,
    ):
        """``upsampling``: whether a prompt upsampler is configured; ``upload_quota_bytes``: what a
        project's uploads may weigh together (0: no limit); ``upload_expiry_seconds``: how long an
        upload is kept (0: until deleted); ``lora_dir``: the LoRA library; ``lora_max_bytes``: the
        largest adapter file a project may upload (0: none); ``archive_max_bytes``: what an uploaded
        ZIP archive may unpack to; ``training_max_images``: the pictures one training may take."""
        self.auth = auth
        self.tasks = tasks
        self.uploads = uploads
        self.files = files
        self.events = events
        self.dispatcher = dispatcher
        self.catalog = catalog
        self.url_allowlist = url_allowlist
        self.request_rate = request_rate or NoRequestRate()
        self.upsampling = upsampling
        self.image_limits = image_limits
        self.task_limits = task_limits
        self.max_prompt_chars = max_prompt_chars
        self.upload_quota_bytes = upload_quota_bytes
        self.upload_expiry_seconds = upload_expiry_seconds
        self.lora_dir = lora_dir
        self.lora_max_bytes = lora_max_bytes
        self.archive_max_bytes = archive_max_bytes
        self.training_sets = TrainingSets(uploads, files, image_limits, url_allowlist, archive_max_bytes,
                                          training_max_images)

    # --- who asks ------------------------------------------------------------------------

    def caller(self, api_key: str | None, nonce: str | None, signature: str | None,
               address: str | None = None) -> Caller:
        """Who sends a signed (or key-only) request from client ``address``, once their key is
        checked and the request counted against its rate."""
        return self._counted(self.auth.authenticate(api_key, nonce, signature, address))

    def token_caller(self, token: str | None, address: str | None = None) -> Caller:
        """Who sends a request with a single credential (``API_KEY:API_SECRET`` or a key-only
        key) from client ``address``, once checked and counted."""
        return self._counted(self.auth.authenticate_token(token, address))

    def _counted(self, caller: Caller) -> Caller:
        self.request_rate.take(caller.key_id)
        return caller

    # --- running ------------------------------------------------------------------------

    def tool(self, owner: str, project: str) -> Tool:
        tool = self.catalog.find(owner, project)
        if tool is None:
            raise UnknownModel(f"{owner}/{project}")
        return tool

    def admit(self, caller: Caller, tool: Tool) -> None:
        """Refuse a Run before its inputs cost anything: over a limit on unfinished tasks
        (:class:`TooManyTasks`; checked, not reserved: Runs arriving together may pass a limit by a
        few), or of a model that could not be loaded (:class:`ModelUnavailable`)."""
        if self.task_limits.any:
            counts = self.tasks.unfinished_for_run(caller.key_id, caller.project_id, tool.slug)
            if refusal := counts.refusal(self.task_limits, tool.slug):
                raise TooManyTasks(refusal)
        if problem := self.dispatcher.load_error(tool.slug):
            raise ModelUnavailable(f"Model {tool.slug} is not available on this server: {problem}")

    def run(self, caller: Caller, tool: Tool, request: RunRequest,
            accept: Callable[[], None] = lambda: None) -> TaskRef:
        """Check a Run (its prompt, its input image, fetched through the SSRF guard, its callback
        URL, whose host is resolved: this blocks), call ``accept()`` (a door spends the request's
        nonce there: a refused request may be sent again as it is), then queue it: its input image
        kept, the task row, its ``task_queue`` event, a worker woken."""
        pictures: list[Picture] = []
        if tool.kind == "train":
            order, pictures = self._training(caller, request)
            images = []
        else:
            order, images = self._checked(tool, request)
            order = order.model_copy(update={"loras": self._loras(caller, request)})
        with current_span("fluxhost.run", **{"fluxhost.model": tool.slug}) as span:
            with self._accepted(accept, keeps_files=bool(images or pictures)):
                folder = ""
                if order.training is not None:
                    kept, folder = self._keep_pictures(pictures)
                    training = order.training.model_copy(update={"images": kept, "pictures_folder": folder})
                    order = order.model_copy(update={"training": training})
                with self._removed_unless_queued(folder):
                    task = self._queue(caller, tool, request, order, images)
            self._announce(caller, tool, task)
            if span is not None:
                span.set_attribute("fluxhost.task_id", task.id)
            return task

    @contextmanager
    def _accepted(self, accept: Callable[[], None], keeps_files: bool) -> Iterator[None]:
        """Around queuing a Run: ``accept()`` in the transaction that adds its task, one commit
        for both; a Run that keeps files (input images, training pictures) accepts first and
        alone, so that a resend is refused before anything is kept."""
        if keeps_files:
            accept()
            yield
            return
        with self.tasks.transaction():
            accept()
            yield

    def _checked(self, tool: Tool, request: RunRequest) -> tuple[WorkOrder, list[InputImage]]:
        """The work order of a Run that passes every check, and its input images."""
        prompt = request.prompt.strip()
        if not prompt and tool.kind != "upscale":
            raise InvalidInput("prompt", "required")
        if len(prompt) > self.max_prompt_chars:
            raise InvalidInput("prompt", f"must be between 1 and {self.max_prompt_chars} characters")
        if request.aspect_ratio is not None and request.aspect_ratio not in ASPECT_RATIOS:
            raise InvalidInput("aspect_ratio", f"must be one of {', '.join(ASPECT_RATIOS)}")
        sources = [source for source in (request.input_image, *request.more_images) if source not in (None, b"", "")]
        if tool.takes_image and not sources:
            raise InvalidInput("input_image", "required")
        if len(sources) > tool.max_images:
            raise InvalidInput("input_image", f"takes at most {tool.max_images} images for this tool" if tool.max_images
                               else "is not taken by this tool: it draws from the prompt alone")
        images = []
        for number, source in enumerate(sources, start=1):
            try:
                images.append(self.input_image(source))
            except ImageRefused as error:  # named as BFL names them: input_image, input_image_2...
                raise InvalidInput("input_image" if number == 1 else f"input_image_{number}", str(error)) from None
        if request.prompt_upsampling and not self.upsampling:
            raise UpsamplingUnavailable()
        self._check_callback(request)
        width, height = self._size(tool, request, images)
        order = WorkOrder(
            prompt=prompt, width=width, height=height,
            seed=secrets.randbelow(SEED_MAX + 1) if request.seed is None else request.seed,
            output_format=request.output_format,
            aspect_ratio=request.aspect_ratio or ("" if images or tool.takes_image else DEFAULT_ASPECT_RATIO),
            prompt_upsampling=request.prompt_upsampling, safety_tolerance=request.safety_tolerance,
            steps=request.steps, guidance=request.guidance, num_images=request.num_images,
            strength=(request.strength or tool.strength) if images and tool.redraws else None,
            control=request.control if tool.kind == "upscale" else None,
            ignored_inputs=request.ignored_inputs,
        )
        return order, images

    def _training(self, caller: Caller, request: RunRequest) -> tuple[WorkOrder, list[Picture]]:
        """The work order of a training Run that passes every check, and the pictures it will
        train on (kept, and named in the order, once the Run is accepted)."""
        asked = request.training
        if asked is None:
            raise InvalidInput("training_folder", "required")
        self._check_callback(request)
        try:
            pictures = self.training_sets.gather(caller.project_id, asked)
        except TrainingSetRefused as error:
            raise InvalidInput(error.field, error.problem) from None
        resume = self._resumable(caller, asked) if asked.resume_task else None
        training = Training(
            trigger_word=asked.trigger_word, name=asked.name, description=asked.description,
            steps=asked.steps, learning_rate=asked.learning_rate, rank=asked.rank, batch_size=asked.batch_size,
            resolution=asked.resolution, gradient_accumulation=asked.gradient_accumulation,
            gradient_checkpointing=asked.gradient_checkpointing, caption_dropout=asked.caption_dropout,
            optimizer=asked.optimizer, save_every=asked.save_every, keep_checkpoints=asked.keep_checkpoints,
            sample_every=asked.sample_every, sample_prompts=asked.sample_prompts, guidance=asked.guidance,
            checkpoints_folder=self.files.new_folder(), resume=resume, project_id=caller.project_id,
            key_id=caller.key_id,
        )
        seed = secrets.randbelow(SEED_MAX + 1) if request.seed is None else request.seed
        order = WorkOrder(prompt="", width=asked.resolution, height=asked.resolution, seed=seed, output_format="png",
                          aspect_ratio="", training=training, ignored_inputs=request.ignored_inputs)
        return order, pictures

    def _resumable(self, caller: Caller, asked: TrainingRequest) -> str:
        """The checkpoints folder of the ended training ``asked.resume_task`` of the caller's project."""
        earlier = self.tasks.find(caller.project_id, task_id=asked.resume_task)
        if earlier is None or earlier.order.training is None:
            raise InvalidInput("resume_task", "names no training task of your project")
        if earlier.status not in (Status.POSTPROCESS_END, Status.CANCEL):
            raise InvalidInput("resume_task", "names a training that has not ended: wait for it, or Kill it")
        if earlier.order.training.rank != asked.rank:
            raise InvalidInput("resume_task", f"names a training of rank {earlier.order.training.rank}: resume it at "
                                              "the same lora_rank")
        return earlier.order.training.checkpoints_folder

    def _keep_pictures(self, pictures: list[Picture]) -> tuple[tuple[TrainingImage, ...], str]:
        with file_store("store"):
            return self.training_sets.keep(pictures)

    def _loras(self, caller: Caller, request: RunRequest) -> tuple[LoraRef, ...]:
        """The Run's LoRA adapters, each checked: in the library, one of the caller's project's
        uploaded adapters (found, so the worker reads its file), or a URL the SSRF guard admits
        (fetched by the worker)."""
        resolved = []
        for lora in request.loras:
            def refused(field: str, problem: str, lora: LoraRef = lora) -> InvalidInput:
                return InvalidInput("loras" if lora.listed else field, problem)

            if lora.source == "library" and library_file(self.lora_dir, lora.name) is None:
                raise refused("lora_library", "names no adapter of this server's LoRA library")
            if lora.source == "upload":
                upload = self.uploads.find(caller.project_id, lora.name)
                if upload is None or upload.content_type != SAFETENSORS_TYPE:
                    raise refused("lora_upload", "names no LoRA adapter (.safetensors) of your project: "
                                                 "upload one with File/Upload and give its id")
                lora = lora.model_copy(update={"file": FileRef(folder=upload.folder, name=upload.file_name,
                                                               content_type=upload.content_type, size=upload.size)})
            if lora.source == "url" and (own := self.files.find(lora.name)) is not None:
                # One of this server's files (a trained adapter's output URL): read, never fetched.
                with file_store("read"):
                    data = self.files.read(*own)
                if data is None or not is_safetensors(data):
                    raise refused("lora_url", "names no LoRA adapter (.safetensors) this server has")
                lora = lora.model_copy(update={"file": FileRef(folder=own[0], name=own[1],
                                                               content_type=SAFETENSORS_TYPE, size=len(data))})
            elif lora.source == "url":
                try:
                    check_public_url(lora.name, self.url_allowlist)
                except UrlRefused as error:
                    raise refused("lora_url", str(error)) from None
            resolved.append(lora)
        return tuple(resolved)

    def _check_callback(self, request: RunRequest) -> None:
        if request.callback_url:
            try:
                check_public_url(request.callback_url, self.url_allowlist)
            except UrlRefused as error:
                raise InvalidInput("callback_url", str(error)) from None

    def _size(self, tool: Tool, request: RunRequest, images: list[InputImage]) -> tuple[int, int]:
        """The output's size: asked in pixels; an upscale's input times its factor; an image tool
        asked for no size: the input's shape; else the aspect ratio's at the tool's megapixels."""
        if tool.kind == "upscale":
            factor = request.upscale or DEFAULT_UPSCALE
            width, height = (round(side * factor) for side in images[0].image.size)
            if width * height > self.image_limits.max_pixels:
                raise InvalidInput("upscale", f"would make {width}x{height} pixels, more than the "
                                              f"{self.image_limits.max_pixels} this server makes")
            return width, height
        if request.size is not None:
            return request.size
        if request.aspect_ratio is None and images:
            return size_like(images[0].image)
        return size_for_aspect_ratio(request.aspect_ratio or DEFAULT_ASPECT_RATIO, tool.megapixels)

    def input_image(self, source: bytes | str) -> InputImage:
        """A Run's input image: uploaded bytes, a file this server stored, or a URL fetched through
        the SSRF guard (this blocks)."""
        if isinstance(source, bytes):
            return decode(source, self.image_limits)
        url = source.strip()
        own = self.files.find(url)
        if own is None:
            return decode(fetch(url, self.url_allowlist, self.image_limits), self.image_limits)
        with file_store("read"):
            data = self.files.read(*own)
        if data is None:
            raise ImageRefused("names a file this server no longer has")
        return decode(data, self.image_limits)

    def _queue(self, caller: Caller, tool: Tool, request: RunRequest, order: WorkOrder,
               images: list[InputImage]) -> TaskRef:
        parameters: dict[str, Any] = dict(request.parameters)
        if request.seed is None:
            parameters["seed"] = str(order.seed)  # recorded, so the image can be made again
        if carrier := context_carrier():
            order = order.model_copy(update={"trace": carrier})
        folder = self.files.new_folder() if images else ""
        with self._removed_unless_queued(folder):
            stored = []
            for number, image in enumerate(images):
                name = f"input-{number}.{image.extension}"
                self._save(folder, name, image.data)
                stored.append(FileRef(folder=folder, name=name, content_type=image.content_type, size=len(image.data)))
            if stored:
                order = order.model_copy(update={"input_images": tuple(stored)})
                if request.image_parameter:
                    parameters.setdefault(request.image_parameter, self.files.url(folder, stored[0].name))
            return self.tasks.create(caller.project_id, tool.slug, parameters=parameters, order=order,
                                     callback_url=request.callback_url, api_key_id=caller.key_id)

    @contextmanager
    def _removed_unless_queued(self, folder: str) -> Iterator[None]:
        """The files a Run kept in ``folder`` (its input images, its archive's pictures) removed
        where its task is not stored after all (a full disk, a locked database): no task names them."""
        try:
            yield
        except Exception:
            if folder:
                try:
                    self.files.clear(folder)
                except OSError as error:
                    log.warning("the files of a Run that was not queued could not be removed: %s", error_name(error))
            raise

    def _announce(self, caller: Caller, tool: Tool, task: TaskRef) -> None:
        """A queued task, once committed: its ``task_queue`` event, and a worker woken."""
        self.events.publish(TaskEvent(task.id, task.socket_token, Status.QUEUE))
        log.info("task %s task_queue (%s, project %s)", task.id, tool.slug, caller.project_id,
                 extra={"task_id": task.id, "status": Status.QUEUE.value})
        self.dispatcher.notify(task.id, tool.slug)

    def _save(self, folder: str, name: str, data: bytes) -> None:
        """Write a file, or raise :class:`StorageFailed` (the store leaves no partial file)."""
        with file_store("store"):
            self.files.save(folder, name, data)

    # --- uploads ------------------------------------------------------------------------

    def upload(self, caller: Caller, data: bytes, sent_name: str = "", accept: Callable[[], None] = lambda: None,
               folder_id: str = "") -> list[UploadView]:
        """Keep a file for later Runs and trainings (a picture, a LoRA adapter, a ``.txt`` caption),
        or each picture and caption of a ZIP archive, in one of the project's folders when
        ``folder_id`` names one: checked, recorded within the project's quota, written, and only
        then ``accept()``-ed (a door spends the request's nonce there), so a request refused for any
        reason, a full disk included, may be sent again as it is, and leaves neither file nor
        record. A file's URL is a capability (as output URLs are) that a later Run takes as its
        input; ``sent_name`` (the client's file name) is only shown."""
        if folder_id and self.uploads.find_folder(caller.project_id, folder_id) is None:
            raise InvalidInput("folder", "names no folder of your project (File/FolderCreate)")
        archived = is_zip(data)
        try:
            files = (archive_members(data, ARCHIVE_MAX_MEMBERS, self.archive_max_bytes) if archived
                     else iter([(sent_name, data)]))
            kept: list[UploadView] = []
            try:
                for name, content in files:
                    if kind := self._kind_of(name, content, inside_archive=archived):
                        kept.append(self._keep(caller, name, content, kind, folder_id or None))
                if not kept:
                    raise InvalidInput("upload", "holds no picture or caption")
                accept()
            except BaseException:
                for upload in kept:
                    self._discard(upload)
                raise
        except ArchiveRefused as error:
            raise InvalidInput("upload", str(error)) from None
        log.info("project %s uploaded %s file(s), %s bytes", caller.project_id, len(kept),
                 sum(upload.size for upload in kept))
        return kept

    def _kind_of(self, name: str, data: bytes, inside_archive: bool) -> tuple[str, str, bytes] | None:
        """(extension, content type, bytes to keep) of an uploaded file: a LoRA adapter, a
        caption, or a picture (checked and normalised); None for an archive's member that is
        none of these (skipped); :class:`InvalidInput` for a file sent alone that is none."""
        if is_safetensors(data):
            if len(data) > self.lora_max_bytes:
                raise InvalidInput("upload", f"is a LoRA adapter larger than {self.lora_max_bytes // 1_000_000} MB "
                                             "(FLUXHOST_LORA_MAX_BYTES)")
            return SAFETENSORS_SUFFIX.removeprefix("."), SAFETENSORS_TYPE, data
        if name.lower().endswith(CAPTION_SUFFIX):
            try:
                caption_text(data, name)
            except ValueError as error:
                raise InvalidInput("upload", str(error)) from None
            return CAPTION_SUFFIX.removeprefix("."), CAPTION_TYPE, data
        try:
            image = decode(data, self.image_limits)
        except ImageRefused as error:
            if inside_archive and not name.lower().endswith(IMAGE_SUFFIXES):
                return None
            raise InvalidInput("upload", f"{error} ({name})" if inside_archive else str(error)) from None
        return image.extension, image.content_type, image.data

    def _keep(self, caller: Caller, name: str, data: bytes, kind: tuple[str, str, bytes],
              folder_id: str | None) -> UploadView:
        """One file recorded within the quota, then written (the record removed if it cannot be)."""
        extension, content_type, data = kind
        wanted = NewUpload(caller.project_id, caller.key_id, shown_name(name, extension), self.files.new_folder(),
                           f"upload.{extension}", content_type, len(data), folder_id)
        upload = self.uploads.reserve(wanted, self.upload_quota_bytes, time.time())
        if upload is None:
            raise UploadQuotaExceeded(self.upload_quota_bytes, self.uploads.bytes_used(caller.project_id),
                                      wanted.size)
        try:
            self._save(upload.folder, upload.file_name, data)
        except BaseException:
            self.uploads.remove(upload)
            raise
        return upload

    def create_folder(self, caller: Caller, name: str, parent_id: str = "",
                      accept: Callable[[], None] = lambda: None) -> FolderView:
        """A folder for the project's uploads (inside ``parent_id``, one of its folders)."""
        name = name.strip()
        if not FOLDER_NAME.fullmatch(name):
            raise InvalidInput("folder_name", "must be 1 to 100 letters, digits, hyphens or underscores")
        if parent_id and self.uploads.find_folder(caller.project_id, parent_id) is None:
            raise InvalidInput("parent_folder", "names no folder of your project")
        accept()
        return self.uploads.create_folder(caller.project_id, name, parent_id or None, time.time())

    def uploads_of(self, caller: Caller, start: int = 0, limit: int = 20, newest_first: bool = True,
                   folder_id: str | None = None) -> UploadPage:
        """A page of the caller's uploads (those of one of its folders, with ``folder_id``)."""
        if folder_id and self.uploads.find_folder(caller.project_id, folder_id) is None:
            raise InvalidInput("folder", "names no folder of your project (File/FolderCreate)")
        total, page = self.uploads.list(caller.project_id, start, limit, newest_first, parent_id=folder_id)
        return UploadPage(total, page)

    def delete_upload(self, caller: Caller, upload_id: str, accept: Callable[[], None] = lambda: None) -> None:
        """Delete one of the caller's uploads, file and record (``accept()`` once it is found);
        a Run that names its URL afterwards is refused. :class:`UploadInUse` while a task that has
        not ended reads it: its run would fail on a file no longer there."""
        upload = self.uploads.find(caller.project_id, upload_id)
        if upload is None:
            raise UploadNotFound()
        if (task_id := self.tasks.unfinished_using(upload.project_id, upload.folder)) is not None:
            raise UploadInUse(task_id)
        accept()
        self._discard(upload)
        log.info("project %s deleted upload %s", caller.project_id, upload.id)

    def expire_uploads(self) -> int:
        """Delete every upload older than the expiry (none when it is 0), files and records, but
        those a task that has not ended reads (a later pass takes them); how many. A janitor's chore."""
        if not self.upload_expiry_seconds:
            return 0
        cutoff, kept, removed = time.time() - self.upload_expiry_seconds, 0, 0
        while expired := self.uploads.created_before(cutoff, skip=kept):
            for upload in expired:
                if self.tasks.unfinished_using(upload.project_id, upload.folder) is not None:
                    kept += 1
                    continue
                self._discard(upload)
                removed += 1
        if removed:
            log.info("%s uploads expired", removed)
        return removed

    def _discard(self, upload: UploadView) -> None:
        """The file first, then the record: what a failure leaves is a record to delete again,
        never a file nothing lists."""
        with file_store("delete"):
            self.files.delete(upload.folder, upload.file_name)
        self.uploads.remove(upload)

    # --- tasks --------------------------------------------------------------------------

    def find(self, caller: Caller, *, task_id: int | None = None, token: str | None = None,
             uuid: str | None = None) -> TaskView:
        """One of the caller's tasks, by id, socket token or uuid."""
        task = self.tasks.find(caller.project_id, task_id=task_id, token=token, uuid=uuid)
        if task is None:
            raise TaskNotFound()
        return task

    def get(self, task_id: int) -> TaskView | None:
        """Any task by id, for a door that already holds it (a Run it answers when the task ends)."""
        return self.tasks.get(task_id)

    def follow(self, token: str) -> TaskView | None:
        """Any project's task by its socket token: the token is the socket's only credential."""
        return self.tasks.find_by_token(token)

    def list(self, caller: Caller, query: TaskQuery) -> TaskPage:
        total, found = self.tasks.list(
            caller.project_id, start=query.start, limit=query.limit, newest_first=query.newest_first,
            sort=query.sort, model_name=query.model_name, search=query.search,
        )
        return TaskPage(total, found)

    def cancel(self, caller: Caller, task: TaskView) -> TaskView:
        """Cancel a queued task: it will never run."""
        return self._stop(caller, task, kill=False)

    def kill(self, caller: Caller, task: TaskView) -> TaskView:
        """Stop a queued or running task; a running generation stops at its next step."""
        return self._stop(caller, task, kill=True)

    def _stop(self, caller: Caller, task: TaskView, kill: bool) -> TaskView:
        stop = self.tasks.kill if kill else self.tasks.cancel
        result = stop(caller.project_id, task.id)
        if result is StopResult.NOT_FOUND:
            raise TaskNotFound()
        if result is StopResult.NOT_STOPPABLE:
            raise NotKillable() if kill else NotCancellable()
        self.events.publish(TaskEvent(task.id, task.socket_token, Status.CANCEL, owes_callback=bool(task.callback_url)))
        log.info("task %s task_cancel (%s)", task.id, "killed" if kill else "cancelled",
                 extra={"task_id": task.id, "status": Status.CANCEL.value})
        return self.tasks.get(task.id)

    def output_data(self, output: OutputView) -> bytes:
        """The bytes of a task's output; :class:`TaskNotFound` once its files are deleted."""
        with file_store("read"):
            data = self.files.read(output.folder, output.name)
        if data is None:
            raise TaskNotFound()
        return data

    def delete_files(self, caller: Caller, task: TaskView) -> None:
        """Remove an ended task's files; the record stays. The files first, then their records:
        where the store fails, the task still lists what to delete again. Deleting twice is fine."""
        if task.project_id != caller.project_id:
            raise TaskNotFound()
        if not task.ended:
            raise TaskNotEnded()
        with file_store("delete"):
            for file in (*task.outputs, *task.order.input_images):
                self.files.delete(file.folder, file.name)
            if training := task.order.training:  # its checkpoints, and the pictures of its archive
                for folder in filter(None, (training.checkpoints_folder, training.pictures_folder)):
                    self.files.clear(folder)
        self.tasks.delete_outputs(task.id)
        self.tasks.forget_inputs(task.id)

    # --- tools --------------------------------------------------------------------------

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
