"""OpenAI's images API shape, a door mounted at ``/openai``: the official ``openai`` package works
unmodified with ``OpenAI(base_url="http://HOST:8000/openai/v1", api_key=TOKEN)``.

``POST /v1/images/generations`` (and ``/v1/images/edits``, multipart with an ``image`` file, on an
editing model) queues one task (``n`` images of it) and answers when it ends, as OpenAI's API
does: ``{"created", "data": [{"url"} or {"b64_json"}], ...}``. The Bearer token is a
key-only key's API key, or ``API_KEY:API_SECRET`` for a signature key (its key alone is public).
``model`` names a served tool (``black-forest-labs/flux-pro-1.1``); any other name (``gpt-image-1``,
``dall-e-3``...) runs the server's default model. Errors come in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Any, Literal

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from fluxhost.auth import AuthError
from fluxhost.events import EventBus, TaskEvent
from fluxhost.http.address import client_address
from fluxhost.http.body import (
    UPLOAD_OVERHEAD_BYTES,
    BodyError,
    BodyTooLarge,
    LimitedBody,
    StorableText,
    parse_parameters,
    read_body,
)
from fluxhost.http.offload import Offload
from fluxhost.http.refusals import answer_refusals
from fluxhost.limits import RateLimited
from fluxhost.operations import (
    InvalidInput,
    ModelUnavailable,
    OperationError,
    Operations,
    StorageFailed,
    TooManyTasks,
    UpsamplingUnavailable,
)
from fluxhost.orders import RunRequest
from fluxhost.settings import Settings
from fluxhost.statuses import TERMINAL, Outcome, Status
from fluxhost.store.database import DATABASE_FAULTS
from fluxhost.store.records import TaskView
from fluxhost.tools import Tool

SIZE = re.compile(r"([0-9]{3,4})x([0-9]{3,4})")
MIN_SIDE, MAX_SIDE = 256, 2048
MAX_IMAGES = 4
WAIT_SECONDS = 600.0  # an answer waits this long for its images; the task goes on regardless
CHECK_SECONDS = 1.0  # a waiting answer also looks at the task this often (events from elsewhere)


class Generation(StorableText):
    """An image generation request as OpenAI's clients send it (unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=MAX_IMAGES)
    size: str = "auto"
    response_format: Literal["url", "b64_json"] = "url"
    output_format: Literal["png", "jpeg"] = "png"

    def run_request(self, image: bytes | None = None) -> RunRequest:
        """The Run this request asks for (an edit's: of ``image``)."""
        return RunRequest(prompt=self.prompt, size=pixels(self.size), output_format=self.output_format,
                          num_images=self.n, input_image=image,
                          parameters=self.model_dump(exclude={"response_format"}, exclude_none=True))


class OpenAIError(Exception):
    def __init__(self, status_code: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, task_made: bool = False):
        """``task_made``: the request's task was queued (it ran, failed, was cancelled, or goes on):
        the answer tells OpenAI's clients not to send it again, which would queue another task
        (they retry 409, 429 and 5xx answers unless told not to)."""
        super().__init__(message)
        self.status_code, self.kind, self.param, self.code = status_code, kind, param, code
        self.task_made = task_made


def pixels(size: str) -> tuple[int, int] | None:
    """``WIDTHxHEIGHT`` (multiples of 32, 256 to 2048 a side) as a pair; None for ``auto``."""
    if size == "auto":
        return None
    match = SIZE.fullmatch(size)
    sides = tuple(int(side) for side in match.groups()) if match else ()
    if len(sides) != 2 or not all(MIN_SIDE <= side <= MAX_SIDE and side % 32 == 0 for side in sides):
        raise OpenAIError(400, f"Invalid size {size!r}: WIDTHxHEIGHT, each a multiple of 32 from {MIN_SIDE} to "
                               f"{MAX_SIDE}, or 'auto'.", param="size")
    return sides


def fail(error: OpenAIError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": str(error), "type": error.kind, "param": error.param, "code": error.code}}
    if error.task_made:
        headers = {**(headers or {}), "x-should-retry": "false"}
    return JSONResponse(body, error.status_code, headers=headers)


def create_openai_app(operations: Operations, events: EventBus, offload: Offload, settings: Settings) -> FastAPI:
    app = FastAPI(title="fluxhost: OpenAI's images API shape", docs_url="/docs", redoc_url=None,
                  redirect_slashes=False)
    upload_limit = settings.input_max_bytes + UPLOAD_OVERHEAD_BYTES
    app.add_middleware(LimitedBody, limit=upload_limit, seconds=settings.body_read_seconds,
                       refuse=lambda error: fail(OpenAIError(error.status_code, str(error)), error.headers))

    def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problem = error.errors()[0]
        param = str(problem["loc"][-1]) if problem["loc"] else None
        return fail(OpenAIError(400, f"Invalid value for '{param}': {problem['msg']}", param=param))

    def refused_input(_request: Request, error: InvalidInput) -> JSONResponse:
        param = "image" if error.field.startswith("input_image") else error.field  # images come as image[]
        return fail(OpenAIError(400, f"Invalid value for '{param}': it {error.problem}.", param=param))

    answer_refusals(app, {
        OpenAIError: lambda _request, error: fail(error),
        RequestValidationError: invalid,
        HTTPException: lambda _request, error: fail(OpenAIError(
            error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None)),
        AuthError: lambda _request, error: fail(OpenAIError(401, str(error), code="invalid_api_key")),
        RateLimited: lambda _request, error: fail(OpenAIError(429, str(error), "rate_limit_error"),
                                                  {"Retry-After": str(error.retry_after)}),
        TooManyTasks: lambda _request, error: fail(OpenAIError(429, str(error), "rate_limit_error")),
        InvalidInput: refused_input,
        (ModelUnavailable, UpsamplingUnavailable): lambda _request, error: fail(OpenAIError(400, str(error))),
        StorageFailed: lambda _request, error: fail(OpenAIError(
            503, f"The server could not {error.action} a file right now: retry shortly.", "server_error")),
        OperationError: lambda _request, _error: fail(OpenAIError(404, "Not found.", code="not_found")),
        DATABASE_FAULTS: lambda _request, _error: fail(OpenAIError(
            503, "The service's database is unavailable right now: retry shortly.", "server_error"),
            {"Retry-After": "1"}),
    })

    def tool_of(model: str | None, edits: bool = False) -> Tool:
        """The served tool ``model`` names (of the right kind: drawing, or editing and redrawing),
        else the server's first of that kind that could be loaded, else its first of that kind."""
        kinds = ("edit", "image-to-image") if edits else ("text-to-image",)
        kind = [tool for tool in operations.catalog.tools if tool.kind in kinds and tool.takes_image == edits]
        found = operations.catalog.find_slug(model) if model and "/" in model else None
        loaded = [tool for tool in kind if not operations.dispatcher.load_error(tool.slug)]
        tool = found if found in kind else next(iter(loaded or kind), None)
        if tool is None:
            raise OpenAIError(400, f"This server serves no {'image-editing' if edits else 'text-to-image'} model.",
                              param="model")
        return tool

    def queue(authorization: str | None, address: str | None, generation: Generation,
              image: bytes | None = None) -> int:
        """The task for a request from ``address`` (its checks done in the protocol's order),
        queued; its id."""
        caller = operations.token_caller((authorization or "").removeprefix("Bearer ").strip(), address)
        tool = tool_of(generation.model, edits=image is not None)
        operations.admit(caller, tool)
        return operations.run(caller, tool, generation.run_request(image)).id

    async def respond(task_id: int, generation: Generation) -> dict[str, Any]:
        """The answer about the task queued for the request; a database fault meanwhile is answered
        as about that task (sending the request again would queue another)."""
        try:
            task = await ended(task_id)
            reads_images = generation.response_format == "b64_json"  # perhaps from an object store: it waits
            return await (offload.run_waiting if reads_images else offload.run)(answer, task, generation)
        except DATABASE_FAULTS:
            raise OpenAIError(503, f"Task {task_id} was queued, but the service's database is unavailable right "
                                   "now: see Task/List for it.", "server_error", task_made=True) from None

    @app.post("/v1/images/generations")
    async def generate(generation: Generation, request: Request,
                       authorization: str | None = Header(default=None)) -> dict[str, Any]:
        return await respond(await offload.run(queue, authorization, client_address(request), generation),
                             generation)

    @app.post("/v1/images/edits")
    async def edit(request: Request, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        """Multipart: ``image`` (a file), ``prompt`` and the generation's other fields."""
        try:
            values = await parse_parameters(await read_body(request, upload_limit), request.headers)
        except BodyError:
            raise OpenAIError(400, "The body must be multipart/form-data with an image file and a prompt.") from None
        except BodyTooLarge as error:
            raise OpenAIError(413, str(error)) from None
        image = values.get("image", values.get("image[]"))
        if not isinstance(image, bytes):
            raise OpenAIError(400, "An image file is required (multipart field 'image').", param="image")
        try:
            generation = Generation.model_validate({k: v for k, v in values.items() if isinstance(v, str)})
        except ValidationError as error:
            raise RequestValidationError(error.errors()) from None
        return await respond(await offload.run_waiting(queue, authorization, client_address(request), generation,
                                                       image), generation)

    async def ended(task_id: int) -> TaskView:
        """The task once it ended: woken by its terminal event, or found ended by a look at it."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def notice(event: TaskEvent) -> None:
            if event.task_id == task_id and event.type in TERMINAL:
                loop.call_soon_threadsafe(done.set)

        unsubscribe = events.subscribe(notice)
        deadline = time.monotonic() + WAIT_SECONDS
        try:
            while True:
                task = await offload.run(operations.get, task_id)
                if task.ended:
                    return task
                if time.monotonic() > deadline:
                    raise OpenAIError(504, f"The image is not ready after {WAIT_SECONDS:.0f} s; task {task_id} goes "
                                           "on (see Task/List).", "server_error", code="timeout", task_made=True)
                try:
                    await asyncio.wait_for(done.wait(), CHECK_SECONDS)
                except TimeoutError:
                    pass
        finally:
            unsubscribe()

    def answer(task: TaskView, generation: Generation) -> dict[str, Any]:
        if task.status == Status.CANCEL:
            raise OpenAIError(409, f"Task {task.id} was cancelled before its image was made.", code="cancelled",
                              task_made=True)
        if task.outcome is Outcome.MODERATED:
            raise OpenAIError(400, task.debug_error, code="moderation_blocked", task_made=True)
        if task.outcome is not Outcome.COMPLETED:
            raise OpenAIError(500, f"Task {task.id} failed: {task.debug_error}", "server_error", task_made=True)
        data = []
        for output in task.outputs:
            if generation.response_format == "b64_json":
                try:
                    data.append({"b64_json": base64.b64encode(operations.output_data(output)).decode()})
                except StorageFailed as error:
                    raise OpenAIError(503, f"Task {task.id} made its image, but the server could not {error.action} "
                                           "it right now: download it from Task/Detail.", "server_error",
                                      task_made=True) from None
            else:
                data.append({"url": operations.files.url(output.folder, output.name)})
        return {"created": int(task.create_time), "data": data, "output_format": task.order.output_format,
                "size": f"{task.order.width}x{task.order.height}"}

    return app
