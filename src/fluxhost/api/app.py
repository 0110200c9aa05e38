"""The protocol's endpoints (all ``POST /v1/...``) and the file links."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from fluxhost.api.body import BodyError, read_parameters
from fluxhost.api.socket import SocketHub
from fluxhost.auth import AuthError, Caller, request_digest
from fluxhost.callbacks import CallbackRefused, check_callback_url
from fluxhost.events import TaskEvent
from fluxhost.service import Service
from fluxhost.store import StopResult, TaskRecord, is_terminal
from fluxhost.tasks import Status
from fluxhost.tools import InputError, explore, integer_input, validate_inputs
from fluxhost.wire import task_list_body

log = logging.getLogger(__name__)

# How uvicorn serves the app. Socket frames are small JSON fanned out to many subscribers:
# per-message compression would be done once per subscriber for little gain.
UVICORN_OPTIONS = {"ws": "websockets-sansio", "ws_per_message_deflate": False, "log_level": "warning"}

INVALID = "Request parameters are invalid."
NO_TASK = "There is no task yet."
ID_REQUIRED = "taskid or socketaccesstoken is required"
UNKNOWN_MODEL = "slug-owner-project-not-exist"
MAX_LIST = 1000


def ok(**fields: Any) -> JSONResponse:
    return JSONResponse({"result": True, "errors": [], **fields})


def fail(code: int, message: str, status_code: int = 200) -> JSONResponse:
    return JSONResponse({"result": False, "errors": [{"code": code, "message": message}]}, status_code)


def task_list(tasks: list[dict[str, Any]], total: int | None = None) -> JSONResponse:
    return JSONResponse(task_list_body(tasks, total))


class ProtocolError(Exception):
    """A business error: HTTP 200 with ``result: false``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _int_param(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value in (None, ""):
        return default
    try:
        return integer_input(name, value, low, high)
    except InputError as error:
        raise ProtocolError(0, str(error)) from None


def _bool_param(params: dict[str, Any], name: str) -> bool:
    return str(params.get(name, "")).strip().lower() in ("true", "1", "yes")


def _list_param(params: dict[str, Any], name: str) -> list[str]:
    value = params.get(name)
    if isinstance(value, list):
        return [str(v) for v in value]
    if not value:
        return []
    try:
        decoded = json.loads(value)
    except ValueError:
        return [part.strip() for part in str(value).split(",") if part.strip()]
    return [str(v) for v in decoded] if isinstance(decoded, list) else [str(decoded)]


def create_app(service: Service, *, manage_service: bool = True) -> FastAPI:
    """The ASGI app over ``service``; with ``manage_service`` it starts and stops the service."""

    hub = SocketHub(service)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if manage_service:
            service.start()
        hub.start()
        try:
            yield
        finally:
            hub.stop()
            if manage_service:
                service.stop()

    app = FastAPI(title="fluxhost", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service
    app.state.socket_hub = hub

    @app.exception_handler(AuthError)
    async def _auth_error(_request: Request, error: AuthError) -> JSONResponse:
        return fail(0, str(error), 401)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(_request: Request, error: ProtocolError) -> JSONResponse:
        return fail(error.code, error.message)

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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return fail(0, "Internal server error.", 500)

    def caller_of(request: Request) -> Caller:
        headers = request.headers
        return service.keys.authenticate(
            headers.get("x-api-key"), headers.get("x-nonce"), headers.get("x-signature")
        )

    async def spend_nonce(request: Request, caller: Caller) -> None:
        digest = request_digest(request.url.path, await request.body())
        service.keys.spend_nonce(caller, request.headers.get("x-nonce"), digest)

    async def parameters_of(request: Request) -> dict[str, Any]:
        try:
            return await read_parameters(request)
        except BodyError:
            raise ProtocolError(0, INVALID) from None

    def find_task(caller: Caller, params: dict[str, Any], not_found: str = NO_TASK) -> TaskRecord:
        token = params.get("tasktoken") or params.get("socketaccesstoken")
        task_id = params.get("taskid")
        if not token and task_id in (None, ""):
            raise ProtocolError(0, ID_REQUIRED)
        task = None
        if token:
            task = service.store.find(caller.project_id, token=str(token).strip())
        elif str(task_id).strip().isdigit():
            task = service.store.find(caller.project_id, task_id=int(str(task_id).strip()))
        if task is None:
            raise ProtocolError(1, not_found)
        return task

    async def callback_url_of(params: dict[str, Any]) -> str:
        url = str(params.get("callbackUrl") or params.get("callbackurl") or "").strip()
        if url:
            try:  # resolves the host: off the event loop
                await run_in_threadpool(check_callback_url, url, service.callback_allowlist)
            except CallbackRefused as error:
                raise ProtocolError(0, str(error)) from None
        return url

    @app.post("/v1/Run/{owner}/{project}")
    async def run(owner: str, project: str, request: Request) -> JSONResponse:
        caller = caller_of(request)
        tool = service.catalog.find(owner, project)
        if tool is None:
            raise ProtocolError(1, UNKNOWN_MODEL)
        params = await parameters_of(request)
        try:
            inputs = validate_inputs(params)
        except InputError as error:
            raise ProtocolError(0, str(error)) from None
        callback_url = await callback_url_of(params)
        await spend_nonce(request, caller)
        task = service.store.create(
            caller.project_id,
            tool.slug,
            parameters=inputs.parameters,
            request=inputs.for_worker(),
            callback_url=callback_url,
        )
        service.events.publish(TaskEvent(task.id, task.socket_token, Status.QUEUE.value))
        service.dispatcher.notify()
        return JSONResponse(
            {"errors": [], "taskid": str(task.id), "socketaccesstoken": task.socket_token, "result": True}
        )

    @app.post("/v1/Task/Detail")
    async def task_detail(request: Request) -> JSONResponse:
        caller = caller_of(request)
        task = find_task(caller, await parameters_of(request))
        return task_list([service.render(task)])

    async def stop_task(request: Request, kill: bool) -> JSONResponse:
        caller = caller_of(request)
        params = await parameters_of(request)
        task = find_task(caller, params)
        await spend_nonce(request, caller)
        stop = service.store.kill if kill else service.store.cancel
        result = stop(caller.project_id, task.row.id)
        if result is StopResult.NOT_FOUND:
            raise ProtocolError(1, NO_TASK)
        if result is StopResult.NOT_STOPPABLE:
            raise ProtocolError(1, "Task could not be killed: it has already ended." if kill else
                                "Task is not in a cancellable state.")
        service.events.publish(TaskEvent(task.row.id, task.row.socket_token, Status.CANCEL.value))
        return task_list([service.render(service.store.get(task.row.id))])

    @app.post("/v1/Task/Cancel")
    async def task_cancel(request: Request) -> JSONResponse:
        return await stop_task(request, kill=False)

    @app.post("/v1/Task/Kill")
    async def task_kill(request: Request) -> JSONResponse:
        return await stop_task(request, kill=True)

    @app.post("/v1/Task/InputOutputDelete")
    async def task_delete_files(request: Request) -> JSONResponse:
        caller = caller_of(request)
        task = find_task(caller, await parameters_of(request), not_found="task-not-exist")
        await spend_nonce(request, caller)
        if not is_terminal(task):
            raise ProtocolError(1, "Task must be completed or cancelled before deleting files")
        for output in service.store.delete_outputs(task.row.id):
            service.storage.delete(output.folder, output.name)
        return ok()

    @app.post("/v1/Task/List")
    async def list_tasks(request: Request) -> JSONResponse:
        caller = caller_of(request)
        params = await parameters_of(request)
        start = _int_param(params, "start", 0, 0, 10**9)
        limit = _int_param(params, "limit", 20, 1, MAX_LIST)
        order = str(params.get("order", "desc")).strip().lower()
        if order not in ("desc", "asc"):
            raise ProtocolError(0, "Request parameter [order] must be one of desc, asc")
        total, tasks = service.store.list(
            caller.project_id, start=start, limit=limit, newest_first=order == "desc",
            sort=str(params.get("sort", "id")).strip().lower(), model_name=str(params.get("modelName") or ""),
        )
        return task_list([service.render(task) for task in tasks], total)

    @app.post("/v1/Tool/List")
    async def list_tools(request: Request) -> JSONResponse:
        caller_of(request)
        params = await parameters_of(request)
        start = _int_param(params, "start", 0, 0, 10**9)
        limit = _int_param(params, "limit", 20, 1, MAX_LIST)
        search = str(params.get("search", ""))
        categories = set(_list_param(params, "categories"))
        owner = str(params.get("slugowner", "")).strip().lower()
        tools = [
            tool for tool in service.catalog.tools
            if tool.matches(search)
            and (not owner or tool.owner.lower() == owner)
            and (not categories or categories & set(tool.summary()["categories"]))
        ]
        if str(params.get("order", "asc")).strip().lower() == "desc":
            tools.reverse()
        chosen = tools[start : start + limit]
        stats = service.store.model_stats()
        entries = [
            tool.summary(stats.get(tool.slug)) if _bool_param(params, "summary") else tool.detail(stats.get(tool.slug))
            for tool in chosen
        ]
        return ok(total=str(len(tools)), tool=entries)

    @app.post("/v1/Tool/Detail")
    async def tool_detail(request: Request) -> JSONResponse:
        caller_of(request)
        params = await parameters_of(request)
        tool = service.catalog.find(str(params.get("slugowner", "")), str(params.get("slugproject", "")))
        if tool is None:
            raise ProtocolError(1, UNKNOWN_MODEL)
        return ok(tool=[tool.detail(service.store.model_stats().get(tool.slug))])

    @app.post("/v1/Tool/Explore")
    async def explore_tools(request: Request) -> JSONResponse:
        caller_of(request)
        return ok(explore=explore(service.catalog.tools, service.store.model_stats()))

    @app.websocket("/v1")
    async def socket(websocket: WebSocket) -> None:
        await hub.serve(websocket)

    @app.get("/files/{folder}/{name}")
    async def file(folder: str, name: str) -> FileResponse:
        path = service.storage.open_path(folder, name)
        if path is None:
            raise HTTPException(404)
        return FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})

    return app
