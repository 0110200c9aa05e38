"""Black Forest Labs' API shape, a door mounted at ``/bfl``: a client written for BFL's API changes
only its base URL (``https://api.bfl.ai`` -> ``http://HOST:8000/bfl``) and keeps its paths.

``POST /v1/<model>`` (``flux-pro-1.1``...: the served tool ``black-forest-labs/<model>``) queues a
task and answers ``{"id", "polling_url"}``; ``GET /v1/get_result?id=`` answers BFL's statuses
(Pending, Ready, Request Moderated, Content Moderated, Error, Task not found) with
``result.sample``, the image's URL. The ``x-key`` header carries the key: a key-only key's API key,
or ``API_KEY:API_SECRET`` for a signature key. Errors come in BFL's (FastAPI's) shape,
``{"detail": ...}``. Every task made here is an ordinary task: Task/List, the socket, Cancel and
Kill, callbacks and metrics see it like any other.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field

from fluxhost.auth import AuthError
from fluxhost.http.address import client_address
from fluxhost.http.body import LimitedBody, StorableText
from fluxhost.http.offload import Offload
from fluxhost.http.refusals import answer_refusals
from fluxhost.limits import RateLimited
from fluxhost.operations import (
    InvalidInput,
    ModelUnavailable,
    OperationError,
    Operations,
    StorageFailed,
    TaskNotFound,
    TooManyTasks,
    UpsamplingUnavailable,
)
from fluxhost.orders import RunRequest
from fluxhost.settings import Settings
from fluxhost.statuses import UNFINISHED, Outcome
from fluxhost.store.database import DATABASE_FAULTS
from fluxhost.store.records import TaskView
from fluxhost.tools import Tool

OWNER = "black-forest-labs"
# BFL's model names for what fluxhost serves under other slugs, the first one served taken (Ultra
# and Kontext [max] where they are served, else the model they are presets of); any other name is
# looked up as black-forest-labs/<name>.
BFL_NAMES = {"flux-pro": ("flux-pro-1.1",), "flux-pro-1.1-ultra": ("flux-pro-1-1-ultra", "flux-pro-1.1"),
             "flux-dev": ("flux-1-dev",), "flux-schnell": ("flux-1-schnell",),
             "flux-kontext-max": ("flux-kontext-max", "flux-kontext-pro")}
DEFAULT_SIZE = (1024, 768)  # BFL's default when neither a size nor an aspect ratio is asked for
# BFL's names of the inputs a refusal can be about.
FIELD_NAMES = {"callback_url": "webhook_url"}


class Submission(StorableText):
    """A generation request as BFL's clients send it."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1)
    width: int | None = Field(default=None, ge=256, le=1440, multiple_of=32)
    height: int | None = Field(default=None, ge=256, le=1440, multiple_of=32)
    aspect_ratio: str | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    prompt_upsampling: bool = False
    safety_tolerance: int = Field(default=2, ge=0, le=6)
    output_format: Literal["jpeg", "png"] = "jpeg"
    input_image: str | None = Field(default=None, description="Editing models: the image, base64 (or a data "
                                     "URL) or an http(s) URL.")
    webhook_url: str | None = None
    webhook_secret: str | None = Field(default=None, description="Accepted; callbacks are signed with the "
                                       "project's webhook secret (see the README).")

    def run_request(self) -> RunRequest:
        """The Run this submission asks for."""
        size = self.size()
        return RunRequest(
            prompt=self.prompt, aspect_ratio=self.aspect_ratio if size is None else None, size=size,
            seed=self.seed, output_format=self.output_format, safety_tolerance=self.safety_tolerance,
            prompt_upsampling=self.prompt_upsampling,
            input_image=image_input(self.input_image.strip()) if self.input_image else None,
            callback_url=(self.webhook_url or "").strip(),
            parameters=self.model_dump(exclude_none=True, exclude={"input_image", "webhook_secret"}),
        )

    def size(self) -> tuple[int, int] | None:
        """Pixels asked for, or None when an aspect ratio (or the input image's) decides."""
        if self.width is None and self.height is None and (self.aspect_ratio or self.input_image):
            return None
        return self.width or DEFAULT_SIZE[0], self.height or DEFAULT_SIZE[1]


def image_input(value: str) -> bytes | str:
    """BFL's ``input_image``: a URL stays one, base64 (or a data URL) becomes the file's bytes."""
    if value.startswith(("http://", "https://")):
        return value
    try:
        return base64.b64decode(value.partition("base64,")[2] or value, validate=True)
    except ValueError:
        raise InvalidInput("input_image", "must be base64 (or a data URL) or an http(s) URL") from None


def status_of(task: TaskView) -> str:
    if task.status in UNFINISHED:
        return "Pending"
    if task.outcome is Outcome.COMPLETED:
        return "Ready"
    if task.outcome is Outcome.MODERATED:
        return "Request Moderated" if task.moderated_prompt else "Content Moderated"
    return "Error"


def fail(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code, headers=headers)


def create_bfl_app(operations: Operations, offload: Offload, settings: Settings) -> FastAPI:
    app = FastAPI(title="fluxhost: BFL's API shape", docs_url="/docs", redoc_url=None, redirect_slashes=False)
    app.add_middleware(LimitedBody, limit=settings.max_body_bytes + settings.input_max_bytes * 2,
                       seconds=settings.body_read_seconds,
                       refuse=lambda error: fail(error.status_code, str(error), error.headers))

    def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 shape, without echoing the values sent (one may not even be JSON: Infinity)."""
        return JSONResponse({"detail": [{"loc": list(problem["loc"]), "msg": problem["msg"], "type": problem["type"]}
                                        for problem in error.errors()]}, 422)

    answer_refusals(app, {
        RequestValidationError: invalid,
        AuthError: lambda _request, error: fail(403, str(error)),
        RateLimited: lambda _request, error: fail(429, str(error), {"Retry-After": str(error.retry_after)}),
        TooManyTasks: lambda _request, error: fail(429, str(error)),
        InvalidInput: lambda _request, error: fail(422, f"{FIELD_NAMES.get(error.field, error.field)} "
                                                        f"{error.problem}"),
        UpsamplingUnavailable: lambda _request, error: fail(422, f"{error} Send prompt_upsampling: false to use "
                                                                 "the prompt as given."),
        ModelUnavailable: lambda _request, error: fail(422, str(error)),
        StorageFailed: lambda _request, error: fail(503, f"The server could not {error.action} a file right now: "
                                                         "retry shortly."),
        OperationError: lambda _request, _error: fail(404, "Not Found"),
        DATABASE_FAULTS: lambda _request, _error: fail(503, "The service's database is unavailable right now: "
                                                            "retry shortly.", {"Retry-After": "1"}),
    })

    @app.post("/v1/{model}")
    async def submit(model: str, submission: Submission, request: Request,
                     x_key: str | None = Header(default=None)) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            caller = operations.token_caller(x_key, client_address(request))
            tool = served_tool(model)
            operations.admit(caller, tool)
            task = operations.run(caller, tool, submission.run_request())
            return {"id": task.uuid, "polling_url": f"{settings.resolved_public_url}/bfl/v1/get_result?id={task.uuid}"}

        # A webhook's host is resolved, an input image fetched or kept: the outside world, not the database.
        waits = submission.webhook_url or (submission.input_image or "").strip()
        return await (offload.run_waiting if waits else offload.run)(work)

    @app.get("/v1/get_result")
    async def get_result(request: Request, id: str = Query(),  # noqa: A002
                         x_key: str | None = Header(default=None)) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            caller = operations.token_caller(x_key, client_address(request))
            try:
                task = operations.find(caller, uuid=id.strip())
            except TaskNotFound:
                return {"id": id, "status": "Task not found", "result": None, "progress": None, "details": None}
            return result_of(task)

        return await offload.run(work)

    def served_tool(model: str) -> Tool:
        names = BFL_NAMES.get(model, (model,))
        served = (operations.catalog.find(OWNER, name) for name in names)
        return next((tool for tool in served if tool is not None), None) or operations.tool(OWNER, names[0])

    def result_of(task: TaskView) -> dict[str, Any]:
        status = status_of(task)
        answer: dict[str, Any] = {"id": task.uuid, "status": status, "result": None, "progress": None,
                                  "details": None}
        if status == "Ready" and not task.outputs:
            answer.update(status="Error", details={"error": "The task's image was deleted (Task/InputOutputDelete)."})
        elif status == "Ready":
            started, ended = task.start_time or task.create_time, task.postprocess_end_time
            answer["result"] = {
                "sample": operations.files.url(task.outputs[0].folder, task.outputs[0].name),
                "prompt": task.order.prompt, "seed": task.order.seed,
                "start_time": started, "end_time": ended, "duration": round(ended - started, 3),
            }
        elif status != "Pending":
            answer["details"] = {"error": task.debug_error or "The task was cancelled."}
        return answer

    return app
