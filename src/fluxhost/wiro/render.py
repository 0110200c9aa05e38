"""The hosted protocol's JSON: task, output and uploaded-file objects, list answers, tool entries,
socket frames and their progress messages. In task and output objects every value is a string.

Shared by the hosted protocol's door (answers and socket frames) and the callbacks (whose body is
a Task/Detail answer); nothing else renders the protocol's strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fluxhost.events import Progress, TaskEvent
from fluxhost.statuses import Outcome, Status
from fluxhost.storage import FileStore
from fluxhost.store.records import AttemptView, OutputView, TaskView
from fluxhost.store.tasks import ModelStats
from fluxhost.store.uploads import FolderView, UploadView
from fluxhost.tools import Tool
from fluxhost.wiro.schema import Published

# How a task came out, as the hosted protocol's exit code says it (empty until it ends).
PEXIT = {Outcome.COMPLETED: "0", Outcome.FAILED: "1", Outcome.MODERATED: "1", Outcome.STOPPED: "-1", None: ""}
CATEGORY_TITLES = {"flux": "FLUX", "text-to-image": "Text to Image", "image-to-image": "Image to Image",
                   "image-editing": "Image Editing"}
# A self-hosted run costs nothing: the hosted API's price list, with its one flat tier at zero.
FREE = json.dumps([{"inputs": {}, "price": 0, "priceMethod": "cpr"}])


def seconds(value: float | None) -> str:
    """Unix seconds as the protocol writes them: a string, "0" when not reached yet."""
    return str(int(value)) if value else "0"


def render_output(output: OutputView, task: TaskView, files: FileStore) -> dict[str, str]:
    return {
        "id": output.id,
        "name": output.name,
        "contenttype": output.content_type,
        "parentid": output.folder[:32],
        "uuid": task.uuid,
        "size": str(output.size),
        "addedtime": seconds(output.added_at),
        "modifiedtime": seconds(output.added_at),
        "accesskey": output.access_key,
        "url": files.url(output.folder, output.name),
    }


def render_upload(upload: UploadView, files: FileStore) -> dict[str, str]:
    """An entry of File/Upload's and File/List's ``list``: an uploaded file, in its folder."""
    return {
        "id": upload.id,
        "name": upload.name,
        "contenttype": upload.content_type,
        "size": str(upload.size),
        "parentid": upload.parent_id or "",
        "url": files.url(upload.folder, upload.file_name),
        "addedtime": seconds(upload.created_at),
        "accesskey": "",
    }


def render_folder(folder: FolderView) -> dict[str, str]:
    """File/FolderCreate's entry: a folder of uploads."""
    return {"id": folder.id, "name": folder.name, "parentid": folder.parent_id or "", "size": "0",
            "contenttype": "", "addedtime": seconds(folder.created_at)}


def render_callback_attempt(attempt: AttemptView) -> dict[str, str]:
    return {
        "attempt": str(attempt.number),
        "time": seconds(attempt.started_at),
        "statuscode": str(attempt.status_code or ""),
        "error": attempt.error,
        "seconds": f"{attempt.duration:.4f}",
    }


def writable_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A task's inputs as sent, every value one JSON can carry: a NaN or Infinity kept before the
    doors refused them is shown as its text, so that one task can never take a list down."""
    try:
        json.dumps(parameters, allow_nan=False)
        return dict(parameters)
    except ValueError:
        return json.loads(json.dumps(parameters), parse_constant=str)


def render_task(task: TaskView, files: FileStore, model_description: str = "") -> dict[str, Any]:
    owner, _, project = task.model_slug.partition("/")
    outputs = [render_output(output, task, files) for output in task.outputs]
    ended = task.ended_at
    return {
        "id": str(task.id),
        "uuid": task.uuid,
        "socketaccesstoken": task.socket_token,
        "parameters": writable_parameters(task.parameters),
        "debugoutput": task.debug_output,
        "debugerror": task.debug_error,
        "starttime": seconds(task.start_time),
        "endtime": seconds(task.end_time),
        "elapsedseconds": f"{(ended - task.create_time) if ended else 0:.4f}",
        "status": task.status.value,
        "createtime": seconds(task.create_time),
        "canceltime": seconds(task.cancel_time),
        "assigntime": seconds(task.assign_time),
        "accepttime": seconds(task.accept_time),
        "preprocessstarttime": seconds(task.preprocess_start_time),
        "preprocessendtime": seconds(task.preprocess_end_time),
        "postprocessstarttime": seconds(task.postprocess_start_time),
        "postprocessendtime": seconds(task.postprocess_end_time),
        "outputs": outputs,
        "inputs": [{"name": file.name, "contenttype": file.content_type, "size": str(file.size),
                    "url": files.url(file.folder, file.name)} for file in task.inputs],
        "size": str(sum(output.size for output in task.outputs)),
        "pexit": PEXIT[task.outcome],
        "totalcost": "0",
        "modeldescription": model_description,
        "modelslugowner": owner,
        "modelslugproject": project,
        "callbackurl": task.callback_url,
        "callbackstatus": task.callback.status if task.callback else "",
        "callbackattempts": [render_callback_attempt(attempt) for attempt in task.callback.attempts]
        if task.callback else [],
    }


def task_list_body(tasks: list[dict[str, Any]], total: int | None = None) -> dict[str, Any]:
    """The Task/Detail and Task/List answer, also the body of a callback."""
    return {"total": str(len(tasks) if total is None else total), "errors": [], "tasklist": tasks, "result": True}


def progress_message(progress: Progress) -> dict[str, str]:
    """The ``progressGenerate`` object of a ``task_output`` frame (a training's says ``Train`` and
    carries the step's ``loss``)."""
    training = {} if progress.loss is None else {"loss": f"{progress.loss:.5f}"}
    return {
        "type": "progressGenerate",
        "task": "Train" if training else "Generate",
        "percentage": str(round(100 * progress.step / progress.total)),
        "stepCurrent": str(progress.step),
        "stepTotal": str(progress.total),
        "speed": f"{progress.rate:.2f}",
        "speedType": "it/s",
        "elapsedTime": f"{round(progress.elapsed)}s",
        "remainingTime": f"{round(progress.remaining)}s",
        **training,
    }


def frame_text(task_id: int, token: str, kind: str, message: Any = None, **extra: Any) -> str:
    """One socket frame: ``{"type", "id", "tasktoken", "message", "result"}`` and any extra fields."""
    return json.dumps(
        {"type": kind, "id": str(task_id), "tasktoken": token, "message": message, "result": True, **extra}
    )


def error_frame_text(message: str, code: int = 0) -> str:
    return json.dumps({"type": "error", "result": False, "errors": [{"code": code, "message": message}]})


def event_frame_text(event: TaskEvent) -> str:
    """The frame of a non-final event: a lifecycle step (no message), progress, or a whole log."""
    if event.progress is not None:
        extra = {"preview": event.preview} if event.preview else {}
        return frame_text(event.task_id, event.token, event.type, progress_message(event.progress), **extra)
    if event.text is not None:
        return frame_text(event.task_id, event.token, event.type, {"raw": event.text})
    return frame_text(event.task_id, event.token, event.type)


def final_frame_text(task: TaskView, files: FileStore) -> str:
    """The last frame of a task: its outputs and ``pexit`` when it ended, nothing when cancelled."""
    if task.status == Status.CANCEL:
        return frame_text(task.id, task.socket_token, task.status)
    outputs = [render_output(output, task, files) for output in task.outputs]
    return frame_text(task.id, task.socket_token, task.status, outputs, pexit=PEXIT[task.outcome])


def measured_fields(stats: ModelStats | None) -> dict[str, Any]:
    """The hosted API's ``taskstat`` and ``computingtime`` for a tool, from this server's tasks (the
    run count a number, the other counters text, as the hosted docs show them)."""
    stats = stats or ModelStats(0, 0, 0, None, None)
    fields: dict[str, Any] = {
        "taskstat": {
            "runcount": stats.runs,
            "successcount": str(stats.successes),
            "errorcount": str(stats.errors),
            "lastruntime": str(int(stats.last_run_at or 0)),
        }
    }
    if stats.mean_seconds is not None:
        seconds = stats.mean_seconds
        fields["computingtime"] = f"{seconds:.0f} seconds" if seconds >= 10 else f"{seconds:.1f} seconds"
    return fields


def tool_summary(tool: Tool, stats: ModelStats | None = None, covers: str = "") -> dict[str, Any]:
    """The Tool/List entry, its values typed as the hosted API sends them; ``covers``: the URL the
    cover pictures are served under."""
    return {
        "id": str(tool.number),
        "title": tool.title or tool.slug,
        "slugowner": tool.owner,
        "slugproject": tool.project,
        "cleanslugowner": tool.owner,
        "cleanslugproject": tool.project,
        "description": tool.description,
        "seodescription": tool.description,
        "categories": tool.categories,
        "tags": ["image generation", "flux"],
        "marketplace": 1,
        "image": f"{covers}/{tool.cover}" if covers else "",
        "dynamicprice": FREE,
        **measured_fields(stats),
    }


def tool_detail(tool: Tool, schema: Published, stats: ModelStats | None = None, covers: str = "") -> dict[str, Any]:
    """The Tool/Detail entry: the summary plus the input schema."""
    return {**tool_summary(tool, stats, covers), "parameters": [{"title": "Inputs", "items": schema.items()}]}


def explore(tools: list[Tool], stats: dict[str, ModelStats], covers: str = "") -> list[dict[str, Any]]:
    """Tool/Explore's groups: the tools under each category they belong to (the catch-all
    ``tool`` category aside), in Tool/List's item shape."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for tool in tools:
        for category in tool.categories:
            if category != "tool":
                groups.setdefault(category, []).append(tool_summary(tool, stats.get(tool.slug), covers))
    return [
        {"id": category, "title": CATEGORY_TITLES.get(category, category), "tools": items, "total": str(len(items))}
        for category, items in groups.items()
    ]
