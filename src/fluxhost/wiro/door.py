"""The hosted protocol's door: ``POST /v1/...`` as Wiro's clients call it, mounted at ``/v1``.

Each handler reads the body on the event loop (multipart parsing is async), then authenticates,
calls one operation and renders its answer in a single trip to the thread pool:
the database never blocks the loop. Refusals are worded here, in the protocol's error shape,
which is this door's own (another door mounted beside it answers its own way).

The order of checks is the protocol's: the key, then the model, then a readable body, then the
inputs, then the callback URL, and only then the nonce is spent, so a refused request can be
corrected and sent again with the same nonce.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from fluxhost.auth import AuthError, Caller, request_digest
from fluxhost.http.address import client_address
from fluxhost.http.body import (
    UPLOAD_OVERHEAD_BYTES,
    BodyError,
    BodyRefused,
    UploadedFile,
    is_multipart,
    parse_parameters,
    read_body,
)
from fluxhost.http.offload import Offload
from fluxhost.http.refusals import answer_refusals
from fluxhost.limits import RateLimited
from fluxhost.operations import (
    InvalidInput,
    ModelUnavailable,
    NotCancellable,
    NotKillable,
    Operations,
    StorageFailed,
    TaskNotEnded,
    TaskNotFound,
    TaskQuery,
    TooManyTasks,
    UnknownModel,
    UploadInUse,
    UploadNotFound,
    UploadQuotaExceeded,
    UpsamplingUnavailable,
)
from fluxhost.settings import Settings
from fluxhost.store.database import DATABASE_FAULTS
from fluxhost.store.records import TaskView
from fluxhost.tools import Tool
from fluxhost.wiro import messages
from fluxhost.wiro.render import (
    explore,
    render_folder,
    render_task,
    render_upload,
    task_list_body,
    tool_detail,
    tool_summary,
)
from fluxhost.wiro.schema import CALLBACK_URL_NAMES, InputError, InputSchema, integer_input
from fluxhost.wiro.training_form import TrainingForm

log = logging.getLogger(__name__)

MAX_LIST = 1000
TASK_ID = re.compile(r"[0-9]{1,10}")
NAMES_FILES = re.compile(r"image|url|folder|lora", re.IGNORECASE)
"""Inputs of a Run that may name a file to fetch, read or keep (an image, an adapter, a folder)."""
MAX_TASK_ID = 2**31 - 1  # the largest id an INTEGER column holds (PostgreSQL refuses larger)
# The hosted protocol's names of the inputs a Run's refusal can be about (the image's: whichever carried it).
INPUT_NAMES = {"callback_url": "callbackUrl", "aspect_ratio": "aspectRatio", "upload": "file", "upscale": "scale",
               "input_image_2": "inputImage2Url", "input_image_3": "inputImage3Url",
               "lora_library": "selectedLoraModel", "lora_upload": "selectedLoraModelPrivate",
               "lora_url": "selectedLoraModelPrivateUrl", "folder": "folderid", "folder_name": "name",
               "parent_folder": "parentid", "training_folder": "selectedFolder",
               "training_archive": "selectedFolderUrl", "resume_task": "resumeTaskId"}


def ok(**fields: Any) -> dict[str, Any]:
    return {"result": True, "errors": [], **fields}


def fail(code: int, message: str, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"result": False, "errors": [{"code": code, "message": message}]}, status_code,
                        headers=headers)


class ProtocolError(Exception):
    """A refusal in the protocol's words: HTTP 200 with ``result: false``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Parameters:
    """A request's parameters, or why its body could not be read. Reading happens on the loop;
    the error is raised only when a handler asks for them, after the checks that come first."""

    def __init__(self, values: dict[str, Any] | None):
        self._values = values

    @classmethod
    async def of(cls, body: bytes, request: Request) -> Parameters:
        try:
            return cls(await parse_parameters(body, request.headers))
        except BodyError:
            return cls(None)

    @property
    def readable(self) -> bool:
        return self._values is not None

    @property
    def values(self) -> dict[str, Any]:
        if self._values is None:
            raise ProtocolError(0, messages.INVALID)
        return self._values

    def text(self, name: str, default: str = "") -> str:
        """A parameter as text; absent, null or blank: ``default``."""
        value = self.values.get(name)
        if value is None or not str(value).strip():
            return default
        return str(value)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.values.get(name)
        if value in (None, ""):
            return default
        try:
            return integer_input(name, value, low, high)
        except InputError as error:
            raise ProtocolError(0, str(error)) from None

    def page(self) -> tuple[int, int, bool]:
        """A list's page: ``start``, ``limit`` and whether the newest come first (``order``)."""
        start = self.integer("start", 0, 0, 10**9)
        limit = self.integer("limit", 20, 1, MAX_LIST)
        order = self.text("order", "desc").strip().lower()
        if order not in ("desc", "asc"):
            raise ProtocolError(0, messages.one_of("order", ("desc", "asc")))
        return start, limit, order == "desc"

    def flag(self, name: str) -> bool:
        return self.text(name).strip().lower() in ("true", "1", "yes")

    def names(self, name: str) -> list[str]:
        """A list parameter, sent as a JSON array, a JSON string of one, or comma-separated."""
        value = self.values.get(name)
        if isinstance(value, list):
            return [str(v) for v in value]
        if not value:
            return []
        try:
            decoded = json.loads(value)
        except (ValueError, TypeError, RecursionError):  # not JSON text, not text at all, or nested too deep
            return [part.strip() for part in str(value).split(",") if part.strip()]
        return [str(v) for v in decoded] if isinstance(decoded, list) else [str(decoded)]

    def callback_url(self) -> str:
        values = self.values
        return str(next((values[name] for name in CALLBACK_URL_NAMES if values.get(name)), "")).strip()


def caller_of(operations: Operations, headers: Headers, address: str | None) -> Caller:
    """Who sends a request with these headers from ``address``, once their key is checked and
    their request counted."""
    return operations.caller(headers.get("x-api-key"), headers.get("x-nonce"), headers.get("x-signature"), address)


class Call:
    """One request's headers, path and body, as the worker thread needs them."""

    def __init__(self, operations: Operations, request: Request, body: bytes, parameters: Parameters,
                 caller: Caller | None = None):
        self.operations = operations
        self.headers = request.headers
        self.address = client_address(request)
        self.path = request.url.path
        self.body = body
        self.parameters = parameters
        self._caller = caller

    def caller(self) -> Caller:
        """Who sends the request, once their key is checked and their request counted (once: a
        caller known before the body was read is that caller)."""
        if self._caller is None:
            self._caller = caller_of(self.operations, self.headers, self.address)
        return self._caller

    def spend_nonce(self, caller: Caller, path: str | None = None) -> None:
        """``path``: the request's own, where several spellings reach the same thing (a Run's model):
        one spelling resent as another is still a resend."""
        self.operations.auth.spend_nonce(caller, self.headers.get("x-nonce"),
                                         request_digest(path or self.path, self.body))

    def task(self, caller: Caller) -> TaskView:
        """The task named by ``tasktoken``, ``socketaccesstoken`` or ``taskid``."""
        values = self.parameters.values
        token = values.get("tasktoken") or values.get("socketaccesstoken")
        task_id = values.get("taskid")
        if not token and task_id in (None, ""):
            raise ProtocolError(0, messages.ID_REQUIRED)
        if token:
            return self.operations.find(caller, token=str(token).strip())
        task_id = str(task_id).strip()
        if not TASK_ID.fullmatch(task_id) or int(task_id) > MAX_TASK_ID:
            raise TaskNotFound()
        return self.operations.find(caller, task_id=int(task_id))

    def render(self, task: TaskView) -> dict[str, Any]:
        return render_task(task, self.operations.files, self.operations.catalog.description_of(task.model_slug))


def create_wiro_app(operations: Operations, offload: Offload, settings: Settings, safety_note: str) -> FastAPI:
    """The hosted protocol's routes, to mount at ``/v1``; their blocking work runs on ``offload``.
    ``safety_note``: what moderation runs on this server, for safetyTolerance's description."""

    app = FastAPI(title="fluxhost: the hosted task protocol", docs_url="/docs", redoc_url=None, redirect_slashes=False)
    notes = {
        "safetyTolerance": safety_note,
        "promptUpsampling": "Available on this server." if operations.upsampling else (
            "Not available on this server: Runs asking for it are refused."),
    }
    covers = f"{settings.resolved_public_url}/web/covers"  # drawn by the demo model, shipped in the package
    refuse_unknown = settings.unknown_inputs == "refuse"
    unavailable = frozenset() if operations.upsampling else frozenset({"promptUpsampling"})
    schemas = {tool.slug: TrainingForm.of(tool, settings.training_max_steps, refuse_unknown) if tool.kind == "train"
               else InputSchema.of(tool, notes, operations.max_prompt_chars, refuse_unknown, unavailable)
               for tool in operations.catalog.tools}

    def refused_input(request: Request, error: InvalidInput) -> JSONResponse:
        name = INPUT_NAMES.get(error.field, error.field)
        if error.field == "input_image":
            name = InputSchema.image_parameter(request.state.parameters.values)
        return fail(0, messages.parameter(name, error.problem))

    def database_unavailable(request: Request, error: Exception) -> JSONResponse:
        """Nothing was accepted. A request refused before its nonce was spent may be sent again as
        it is, and so may a Run without files (its nonce and its task commit together); a Run
        with input images whose task could not be stored after they were kept needs a new nonce."""
        log.warning("the database failed on %s: %s", request.url.path, type(error).__name__)
        return fail(0, messages.DATABASE_UNAVAILABLE, 503, {"Retry-After": "1"})

    def storage_failed(_request: Request, error: StorageFailed) -> JSONResponse:
        """Nothing was kept. An upload's nonce was not spent (it may be sent again as it is); a
        Run's was where its checks had passed and its input images could not be kept, and so was
        an InputOutputDelete's (the files not deleted are deleted by the next)."""
        return fail(0, messages.NO_ROOM if error.no_room else messages.store_failed(error.action), 503)

    def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return fail(0, messages.bad_url(request.url.path), 404)
        if error.status_code == 405:
            return fail(0, messages.POST_ONLY, 405)
        return fail(0, str(error.detail), error.status_code)

    def unexpected(request: Request, _error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return fail(0, messages.INTERNAL_ERROR, 500)

    answer_refusals(app, {
        AuthError: lambda _request, error: fail(0, messages.AUTHENTICATION[error.failure], 401),
        ProtocolError: lambda _request, error: fail(error.code, error.message),
        RateLimited: lambda _request, error: fail(0, str(error), 429, {"Retry-After": str(error.retry_after)}),
        BodyRefused: lambda _request, error: fail(0, str(error), error.status_code, error.headers),
        InvalidInput: refused_input,
        (ModelUnavailable, TooManyTasks): lambda _request, error: fail(0, str(error)),
        UpsamplingUnavailable: lambda _request, _error: fail(0, messages.UPSAMPLING_UNAVAILABLE),
        UnknownModel: lambda _request, _error: fail(1, messages.UNKNOWN_MODEL),
        TaskNotFound: lambda _request, _error: fail(1, messages.NO_TASK),
        NotCancellable: lambda _request, _error: fail(1, messages.NOT_CANCELLABLE),
        NotKillable: lambda _request, _error: fail(1, messages.NOT_KILLABLE),
        TaskNotEnded: lambda _request, _error: fail(1, messages.TASK_NOT_ENDED),
        UploadNotFound: lambda _request, _error: fail(1, messages.NO_FILE),
        UploadInUse: lambda _request, error: fail(0, messages.upload_in_use(error.task_id)),
        UploadQuotaExceeded: lambda _request, error: fail(
            0, messages.over_quota(error.quota_bytes, error.used_bytes, error.size)),
        StorageFailed: storage_failed,
        HTTPException: http_error,
        RequestValidationError: lambda _request, _error: fail(0, messages.INVALID),
        DATABASE_FAULTS: database_unavailable,
        Exception: unexpected,
    })

    async def handle(request: Request, work: Callable[[Call], dict[str, Any]], *,
                     waits: Callable[[Parameters], bool] = lambda _: False, file_bytes: int = 0) -> JSONResponse:
        """Read the request on the loop, then run ``work`` (auth, one operation, rendering) off it;
        on the shared threads when ``waits`` says it will wait on the outside world (resolve a host
        name, keep or read or delete files: a disk, an object store), never holding up the database
        threads. A multipart body may carry an input image, or a file of ``file_bytes`` where larger:
        its sender is authenticated before it is read, so that no one without a key has the server
        take in hundreds of MB."""
        limit, caller = settings.max_body_bytes, None
        if is_multipart(request.headers):
            limit = max(limit, max(settings.input_max_bytes, file_bytes) + UPLOAD_OVERHEAD_BYTES)
            # a body that may hold images or files of hundreds of MB: read only a known caller's
            caller = await offload.run(caller_of, operations, request.headers, client_address(request))
        body = await read_body(request, limit, settings.body_read_seconds)
        parameters = await Parameters.of(body, request)
        request.state.parameters = parameters
        call = Call(operations, request, body, parameters, caller)
        run_off_loop = offload.run_waiting if waits(parameters) else offload.run
        return JSONResponse(await run_off_loop(work, call))

    def waits_outside(parameters: Parameters) -> bool:
        """Whether the Run waits on the outside world: a callback URL to resolve, or an input that
        may name a file (:data:`NAMES_FILES`: an image, an adapter or a folder, by URL or not), which
        is fetched, read or kept. A wrong yes only picks the larger pool of threads."""
        if not parameters.readable:
            return False
        return bool(parameters.callback_url()) or any(
            value not in (None, "", b"", []) and (isinstance(value, UploadedFile) or NAMES_FILES.search(name))
            for name, value in parameters.values.items())

    def handles_files(_parameters: Parameters) -> bool:
        """An upload kept, or files deleted: on the disk or object store."""
        return True

    def schema_of(tool: Tool) -> InputSchema | TrainingForm:
        return schemas[tool.slug]

    @app.post("/Run/{owner}/{project}")
    async def run(owner: str, project: str, request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            tool = call.operations.tool(owner, project)
            call.operations.admit(caller, tool)
            try:
                asked = schema_of(tool).parse(call.parameters.values, call.parameters.callback_url())
            except InputError as error:
                raise ProtocolError(0, str(error)) from None
            task = call.operations.run(caller, tool, asked,
                                       accept=lambda: call.spend_nonce(caller, f"/v1/Run/{tool.slug}"))
            return {"errors": [], "taskid": str(task.id), "socketaccesstoken": task.socket_token, "result": True}

        return await handle(request, work, waits=waits_outside)

    @app.post("/File/Upload")
    async def upload_file(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            data = call.parameters.values.get("file")
            if not isinstance(data, UploadedFile):
                raise ProtocolError(0, messages.FILE_REQUIRED)
            folder_id = (call.parameters.text("folderid") or call.parameters.text("folderId")).strip()
            kept = call.operations.upload(caller, data, data.filename, accept=lambda: call.spend_nonce(caller),
                                          folder_id=folder_id)
            return ok(list=[render_upload(upload, call.operations.files) for upload in kept])

        return await handle(request, work, waits=handles_files, file_bytes=settings.lora_max_bytes)

    @app.post("/File/List")
    async def list_files(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            start, limit, newest_first = call.parameters.page()
            folder_id = (call.parameters.text("folderid") or call.parameters.text("folderId")).strip()
            page = call.operations.uploads_of(caller, start, limit, newest_first=newest_first,
                                              folder_id=folder_id or None)
            return ok(total=str(page.total), list=[render_upload(upload, call.operations.files)
                                                   for upload in page.uploads])

        return await handle(request, work)

    @app.post("/File/FolderCreate")
    async def create_folder(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            parent_id = (call.parameters.text("parentid") or call.parameters.text("parentId")).strip()
            folder = call.operations.create_folder(caller, call.parameters.text("name"), parent_id,
                                                   accept=lambda: call.spend_nonce(caller))
            return ok(list=[render_folder(folder)])

        return await handle(request, work)

    @app.post("/File/Delete")
    async def delete_file(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            file_id = call.parameters.text("fileid").strip()
            if not file_id:
                raise ProtocolError(0, messages.FILE_ID_REQUIRED)
            call.operations.delete_upload(caller, file_id, accept=lambda: call.spend_nonce(caller))
            return ok()

        return await handle(request, work, waits=handles_files)

    @app.post("/Task/Detail")
    async def task_detail(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            return task_list_body([call.render(call.task(call.caller()))])

        return await handle(request, work)

    def stopping(kill: bool) -> Callable[[Call], dict[str, Any]]:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            task = call.task(caller)
            call.spend_nonce(caller)
            stop = call.operations.kill if kill else call.operations.cancel
            return task_list_body([call.render(stop(caller, task))])

        return work

    @app.post("/Task/Cancel")
    async def task_cancel(request: Request) -> JSONResponse:
        return await handle(request, stopping(kill=False))

    @app.post("/Task/Kill")
    async def task_kill(request: Request) -> JSONResponse:
        return await handle(request, stopping(kill=True))

    @app.post("/Task/InputOutputDelete")
    async def task_delete_files(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            try:
                task = call.task(caller)
            except TaskNotFound:
                raise ProtocolError(1, messages.TASK_NOT_EXIST) from None
            call.spend_nonce(caller)
            call.operations.delete_files(caller, task)
            return ok()

        return await handle(request, work, waits=handles_files)

    @app.post("/Task/List")
    async def list_tasks(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            parameters = call.parameters
            start, limit, newest_first = parameters.page()
            query = TaskQuery(start, limit, newest_first, parameters.text("sort", "id").strip().lower(),
                              str(parameters.values.get("modelName") or ""), parameters.text("search"))
            page = call.operations.list(caller, query)
            return task_list_body([call.render(task) for task in page.tasks], page.total)

        return await handle(request, work)

    @app.post("/Tool/List")
    async def list_tools(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            call.caller()
            parameters = call.parameters
            start = parameters.integer("start", 0, 0, 10**9)
            limit = parameters.integer("limit", 20, 1, MAX_LIST)
            tools = call.operations.tools(parameters.text("search"), parameters.text("slugowner").strip(),
                                          frozenset(parameters.names("categories")))
            if parameters.text("order", "asc").strip().lower() == "desc":
                tools.reverse()
            stats = call.operations.tool_stats()
            summary = parameters.flag("summary")
            entries = [
                tool_summary(tool, stats.get(tool.slug), covers) if summary
                else tool_detail(tool, schema_of(tool), stats.get(tool.slug), covers)
                for tool in tools[start : start + limit]
            ]
            return ok(total=len(tools), tool=entries)

        return await handle(request, work)

    @app.post("/Tool/Detail")
    async def tool_detail_of(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            call.caller()
            tool = call.operations.tool(call.parameters.text("slugowner"), call.parameters.text("slugproject"))
            return ok(tool=[tool_detail(tool, schema_of(tool), call.operations.tool_stats().get(tool.slug), covers)])

        return await handle(request, work)

    @app.post("/Tool/Explore")
    async def explore_tools(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            call.caller()
            return ok(explore=explore(call.operations.catalog.tools, call.operations.tool_stats(), covers))

        return await handle(request, work)

    return app
