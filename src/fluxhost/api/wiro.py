"""The hosted protocol's door: ``POST /v1/...`` as Wiro's clients call it, mounted at ``/v1``.

Each handler reads the body on the event loop (multipart parsing is async), then authenticates,
calls one operation of the service and renders its answer in a single trip to the thread pool:
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
from starlette.exceptions import HTTPException

from fluxhost.api.body import BodyError, BodyTooLarge, is_multipart, parse_parameters, read_body
from fluxhost.api.offload import Offload
from fluxhost.auth import AuthError, Caller, request_digest
from fluxhost.image_inputs import ImageRefused, decode
from fluxhost.inputs import InputError, integer_input
from fluxhost.limits import RateLimited
from fluxhost.operations import (
    InvalidInput,
    ModelUnavailable,
    NotCancellable,
    NotKillable,
    OperationError,
    TaskNotEnded,
    TaskNotFound,
    TaskQuery,
    TooManyTasks,
    UnknownModel,
)
from fluxhost.protocol_json import render_task, task_list_body
from fluxhost.service import Service
from fluxhost.store.database import DATABASE_FAULTS
from fluxhost.store.tasks import TaskRecord
from fluxhost.tools import explore

log = logging.getLogger(__name__)

INVALID = "Request parameters are invalid."
DATABASE_UNAVAILABLE = "The service's database is unavailable right now (locked or unreachable): retry shortly."
NO_TASK = "There is no task yet."
ID_REQUIRED = "taskid or socketaccesstoken is required"
UNKNOWN_MODEL = "slug-owner-project-not-exist"
MAX_LIST = 1000
TASK_ID = re.compile(r"[0-9]{1,10}")
MAX_TASK_ID = 2**31 - 1  # the largest id an INTEGER column holds (PostgreSQL refuses larger)
UPLOAD_OVERHEAD_BYTES = 1_000_000  # multipart framing and the other fields around a file

# (code, message) of each refusal; InvalidInput carries its own message.
REFUSALS: dict[type[OperationError], tuple[int, str]] = {
    UnknownModel: (1, UNKNOWN_MODEL),
    TaskNotFound: (1, NO_TASK),
    NotCancellable: (1, "Task is not in a cancellable state."),
    NotKillable: (1, "Task could not be killed: it has already ended."),
    TaskNotEnded: (1, "Task must be completed or cancelled before deleting files"),
}

def ok(**fields: Any) -> dict[str, Any]:
    return {"result": True, "errors": [], **fields}


def fail(code: int, message: str, status_code: int = 200) -> JSONResponse:
    return JSONResponse({"result": False, "errors": [{"code": code, "message": message}]}, status_code)


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
            raise ProtocolError(0, INVALID)
        return self._values

    def text(self, name: str, default: str = "") -> str:
        return str(self.values.get(name, default))

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.values.get(name)
        if value in (None, ""):
            return default
        try:
            return integer_input(name, value, low, high)
        except InputError as error:
            raise ProtocolError(0, str(error)) from None

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
        except (ValueError, TypeError):  # not JSON text, or not text at all (a number, an object)
            return [part.strip() for part in str(value).split(",") if part.strip()]
        return [str(v) for v in decoded] if isinstance(decoded, list) else [str(decoded)]


class Call:
    """One request's headers, path and body, as the worker thread needs them."""

    def __init__(self, service: Service, request: Request, body: bytes, parameters: Parameters):
        self.service = service
        self.operations = service.operations
        self.headers = request.headers
        self.path = request.url.path
        self.body = body
        self.parameters = parameters

    def caller(self) -> Caller:
        """Who sends the request, once their key is checked and their request counted against
        its rate."""
        headers = self.headers
        caller = self.service.auth.authenticate(headers.get("x-api-key"), headers.get("x-nonce"),
                                                headers.get("x-signature"))
        self.service.request_rate.take(caller.key_id)
        return caller

    def spend_nonce(self, caller: Caller) -> None:
        self.service.auth.spend_nonce(caller, self.headers.get("x-nonce"), request_digest(self.path, self.body))

    def task(self, caller: Caller) -> TaskRecord:
        """The task named by ``tasktoken``, ``socketaccesstoken`` or ``taskid``."""
        values = self.parameters.values
        token = values.get("tasktoken") or values.get("socketaccesstoken")
        task_id = values.get("taskid")
        if not token and task_id in (None, ""):
            raise ProtocolError(0, ID_REQUIRED)
        if token:
            return self.operations.find(caller, token=str(token).strip())
        task_id = str(task_id).strip()
        if not TASK_ID.fullmatch(task_id) or int(task_id) > MAX_TASK_ID:
            raise TaskNotFound()
        return self.operations.find(caller, task_id=int(task_id))

    def render(self, record: TaskRecord) -> dict[str, Any]:
        return render_task(record, self.service.files, self.service.catalog.description_of(record.row.model_slug))


def create_wiro_app(service: Service, offload: Offload) -> FastAPI:
    """The hosted protocol's routes, to mount at ``/v1``; their blocking work runs on ``offload``."""

    app = FastAPI(title="fluxhost: the hosted task protocol", docs_url="/docs", redoc_url=None)

    @app.exception_handler(AuthError)
    async def _auth_error(_request: Request, error: AuthError) -> JSONResponse:
        return fail(0, str(error), 401)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(_request: Request, error: ProtocolError) -> JSONResponse:
        return fail(error.code, error.message)

    @app.exception_handler(RateLimited)
    async def _rate_limited(_request: Request, error: RateLimited) -> JSONResponse:
        answer = fail(0, str(error), 429)
        answer.headers["Retry-After"] = str(error.retry_after)
        return answer

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_request: Request, error: BodyTooLarge) -> JSONResponse:
        return fail(0, str(error), 413)

    @app.exception_handler(OperationError)
    async def _refused(_request: Request, error: OperationError) -> JSONResponse:
        if isinstance(error, (InvalidInput, ModelUnavailable, TooManyTasks)):
            return fail(0, str(error))
        code, message = REFUSALS[type(error)]
        return fail(code, message)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return fail(0, "Error parsing url.", 404)
        if error.status_code == 405:
            return fail(0, "Method not allowed: every endpoint takes POST.", 405)
        return fail(0, str(error.detail), error.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, _error: RequestValidationError) -> JSONResponse:
        return fail(0, INVALID)

    async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
        """Nothing was accepted. A request refused before its nonce was spent may be sent again as
        it is; a Run whose task could not be stored after that needs a new nonce."""
        log.warning("the database failed on %s: %s", request.url.path, type(error).__name__)
        answer = fail(0, DATABASE_UNAVAILABLE, 503)
        answer.headers["Retry-After"] = "1"
        return answer

    for fault in DATABASE_FAULTS:
        app.add_exception_handler(fault, _database_unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return fail(0, "Internal server error.", 500)

    async def handle(request: Request, work: Callable[[Call], dict[str, Any]], *,
                     resolves: Callable[[Parameters], bool] = lambda _: False) -> JSONResponse:
        """Read the request on the loop, then run ``work`` (auth, one operation, rendering) off it;
        on the shared threads when ``resolves`` says it will look up a host name."""
        settings = service.settings
        limit = settings.max_body_bytes
        if is_multipart(request.headers):
            limit = max(limit, settings.input_max_bytes + UPLOAD_OVERHEAD_BYTES)
        body = await read_body(request, limit)
        call = Call(service, request, body, await Parameters.of(body, request))
        run_off_loop = offload.run_waiting if resolves(call.parameters) else offload.run
        return JSONResponse(await run_off_loop(work, call))

    def callback_url(parameters: Parameters) -> str:
        values = parameters.values
        return str(values.get("callbackUrl") or values.get("callbackurl") or "").strip()

    def fetches(parameters: Parameters) -> bool:
        """Whether the Run resolves a host name: a callback URL or an input image URL to fetch."""
        if not parameters.readable:
            return False
        values = parameters.values
        image_url = values.get("inputImageUrl") or isinstance(values.get("inputImage"), str)
        return bool(callback_url(parameters) or image_url)

    @app.post("/Run/{owner}/{project}")
    async def run(owner: str, project: str, request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            tool = call.operations.tool(owner, project)
            call.operations.admit(caller, tool.slug)
            order = call.operations.prepare_run(owner, project, call.parameters.values, callback_url(call.parameters))
            call.spend_nonce(caller)
            task = call.operations.run(caller, order)
            return {"errors": [], "taskid": str(task.id), "socketaccesstoken": task.socket_token, "result": True}

        return await handle(request, work, resolves=fetches)

    @app.post("/File/Upload")
    async def upload_file(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            data = call.parameters.values.get("file")
            if not isinstance(data, bytes):
                raise ProtocolError(0, "Request parameter [file] required: send the file as multipart form data")
            try:
                image = decode(data, "file", call.operations.image_limits)
            except ImageRefused as error:
                raise ProtocolError(0, str(error)) from None
            call.spend_nonce(caller)
            upload = call.operations.upload(caller, image)
            return ok(list=[{"id": upload.id, "name": upload.name, "contenttype": upload.content_type,
                             "size": str(upload.size), "parentid": "", "url": upload.url,
                             "addedtime": str(int(upload.added_at)), "accesskey": ""}])

        return await handle(request, work)

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
                raise ProtocolError(1, "task-not-exist") from None
            call.spend_nonce(caller)
            call.operations.delete_files(caller, task)
            return ok()

        return await handle(request, work)

    @app.post("/Task/List")
    async def list_tasks(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            caller = call.caller()
            parameters = call.parameters
            start = parameters.integer("start", 0, 0, 10**9)
            limit = parameters.integer("limit", 20, 1, MAX_LIST)
            order = parameters.text("order", "desc").strip().lower()
            if order not in ("desc", "asc"):
                raise ProtocolError(0, "Request parameter [order] must be one of desc, asc")
            query = TaskQuery(start, limit, order == "desc", parameters.text("sort", "id").strip().lower(),
                              str(parameters.values.get("modelName") or ""))
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
                tool.summary(stats.get(tool.slug)) if summary else tool.detail(stats.get(tool.slug))
                for tool in tools[start : start + limit]
            ]
            return ok(total=str(len(tools)), tool=entries)

        return await handle(request, work)

    @app.post("/Tool/Detail")
    async def tool_detail(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            call.caller()
            tool = call.operations.tool(call.parameters.text("slugowner"), call.parameters.text("slugproject"))
            return ok(tool=[tool.detail(call.operations.tool_stats().get(tool.slug))])

        return await handle(request, work)

    @app.post("/Tool/Explore")
    async def explore_tools(request: Request) -> JSONResponse:
        def work(call: Call) -> dict[str, Any]:
            call.caller()
            return ok(explore=explore(call.operations.catalog.tools, call.operations.tool_stats()))

        return await handle(request, work)

    return app
