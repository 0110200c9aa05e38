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

from fluxhost.api.body import BodyTooLarge, LimitedBody, StorableText
from fluxhost.api.offload import Offload
from fluxhost.auth import AuthError, Caller
from fluxhost.limits import RateLimited
from fluxhost.operations import InvalidInput, ModelUnavailable, OperationError, TaskNotFound, TooManyTasks
from fluxhost.service import Service
from fluxhost.statuses import UNFINISHED, Status
from fluxhost.store.database import DATABASE_FAULTS
from fluxhost.store.tasks import TaskRecord

OWNER = "black-forest-labs"
# BFL's model names for what fluxhost serves under other slugs (its presets); any other name is
# looked up as black-forest-labs/<name>.
BFL_NAMES = {"flux-pro": "flux-pro-1.1", "flux-pro-1.1-ultra": "flux-pro-1.1", "flux-dev": "flux-1-dev",
             "flux-schnell": "flux-1-schnell", "flux-2-klein": "flux-2-klein", "flux-kontext-max": "flux-kontext-pro"}
DEFAULT_SIZE = (1024, 768)  # BFL's default when neither a size nor an aspect ratio is asked for


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

    def inputs(self) -> dict[str, str]:
        """The tool's inputs, as the hosted protocol names them."""
        inputs = {"prompt": self.prompt, "promptUpsampling": str(self.prompt_upsampling).lower(),
                  "safetyTolerance": str(self.safety_tolerance), "outputFormat": self.output_format}
        if self.seed is not None:
            inputs["seed"] = str(self.seed)
        if self.aspect_ratio and self.width is None and self.height is None:
            inputs["aspectRatio"] = self.aspect_ratio
        if self.input_image:
            inputs.update(image_input(self.input_image.strip()))
        return inputs

    def size(self) -> tuple[int, int] | None:
        """Pixels asked for, or None when an aspect ratio (or the input image's) decides."""
        if self.width is None and self.height is None and (self.aspect_ratio or self.input_image):
            return None
        return self.width or DEFAULT_SIZE[0], self.height or DEFAULT_SIZE[1]


def image_input(value: str) -> dict[str, Any]:
    """BFL's ``input_image`` as the tool's input: a URL stays one, base64 becomes the file's bytes."""
    if value.startswith(("http://", "https://")):
        return {"inputImageUrl": value}
    try:
        return {"inputImage": base64.b64decode(value.partition("base64,")[2] or value, validate=True)}
    except ValueError:
        raise InvalidInput("input_image must be base64 (or a data URL) or an http(s) URL") from None


def status_of(record: TaskRecord) -> str:
    task = record.row
    if Status(task.status) in UNFINISHED:
        return "Pending"
    if task.status == Status.POSTPROCESS_END and task.pexit == "0":
        return "Ready"
    for moderated in ("Request Moderated", "Content Moderated"):
        if task.debug_error.startswith(moderated):
            return moderated
    return "Error"


def fail(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code, headers=headers)


def create_bfl_app(service: Service, offload: Offload) -> FastAPI:
    app = FastAPI(title="fluxhost: BFL's API shape", docs_url="/docs", redoc_url=None)
    app.add_middleware(LimitedBody, limit=service.settings.max_body_bytes + service.settings.input_max_bytes * 2,
                       refuse=lambda limit: fail(413, str(BodyTooLarge(limit))))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 shape, without echoing the values sent (one may not even be JSON: Infinity)."""
        return JSONResponse({"detail": [{"loc": list(problem["loc"]), "msg": problem["msg"], "type": problem["type"]}
                                        for problem in error.errors()]}, 422)

    @app.exception_handler(AuthError)
    async def _auth_error(_request: Request, error: AuthError) -> JSONResponse:
        return fail(403, str(error))

    @app.exception_handler(RateLimited)
    async def _rate_limited(_request: Request, error: RateLimited) -> JSONResponse:
        return fail(429, str(error), {"Retry-After": str(error.retry_after)})

    @app.exception_handler(OperationError)
    async def _refused(_request: Request, error: OperationError) -> JSONResponse:
        if isinstance(error, TooManyTasks):
            return fail(429, str(error))
        if isinstance(error, (InvalidInput, ModelUnavailable)):
            return fail(422, str(error))
        return fail(404, "Not Found")

    async def _database_unavailable(_request: Request, _error: Exception) -> JSONResponse:
        return fail(503, "The service's database is unavailable right now: retry shortly.", {"Retry-After": "1"})

    for fault in DATABASE_FAULTS:
        app.add_exception_handler(fault, _database_unavailable)

    def caller_of(token: str | None) -> Caller:
        caller = service.auth.authenticate_token(token)
        service.request_rate.take(caller.key_id)
        return caller

    @app.post("/v1/{model}")
    async def submit(model: str, submission: Submission, x_key: str | None = Header(default=None)) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            operations = service.operations
            caller = caller_of(x_key)
            tool = operations.tool(OWNER, BFL_NAMES.get(model, model))
            operations.admit(caller, tool.slug)
            order = operations.prepare_run(tool.owner, tool.project, submission.inputs(),
                                           (submission.webhook_url or "").strip(), size=submission.size())
            task = operations.run(caller, order)
            return {"id": task.uuid, "polling_url": f"{service.settings.resolved_public_url}/bfl/v1/get_result"
                                                    f"?id={task.uuid}"}

        fetches = submission.webhook_url or (submission.input_image or "").startswith("http")
        return await (offload.run_waiting if fetches else offload.run)(work)

    @app.get("/v1/get_result")
    async def get_result(id: str = Query(), x_key: str | None = Header(default=None)) -> dict[str, Any]:  # noqa: A002
        def work() -> dict[str, Any]:
            caller = caller_of(x_key)
            try:
                record = service.operations.find(caller, uuid=id.strip())
            except TaskNotFound:
                return {"id": id, "status": "Task not found", "result": None, "progress": None, "details": None}
            return result_of(record)

        return await offload.run(work)

    def result_of(record: TaskRecord) -> dict[str, Any]:
        task = record.row
        status = status_of(record)
        answer: dict[str, Any] = {"id": task.uuid, "status": status, "result": None, "progress": None,
                                  "details": None}
        if status == "Ready":
            started, ended = task.start_time or task.create_time, task.postprocess_end_time
            answer["result"] = {
                "sample": service.files.url(record.outputs[0].folder, record.outputs[0].name),
                "prompt": task.parameters.get("prompt", ""), "seed": int(task.parameters.get("seed", 0)),
                "start_time": started, "end_time": ended, "duration": round(ended - started, 3),
            }
        elif status != "Pending":
            answer["details"] = {"error": task.debug_error or "The task was cancelled."}
        return answer

    return app
