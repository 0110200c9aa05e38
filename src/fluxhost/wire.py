"""The protocol's JSON shapes. In task and output objects every value is a string."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from fluxhost.storage import Storage
from fluxhost.store import TaskRecord


def seconds(value: float | None) -> str:
    """Unix seconds as the protocol writes them: a string, "0" when not reached yet."""
    return str(int(value)) if value else "0"


def render_output(output: Row, task: Row, storage: Storage) -> dict[str, str]:
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
        "url": storage.url(output.folder, output.name),
    }


def render_callback_attempt(attempt: Row) -> dict[str, str]:
    return {
        "attempt": str(attempt.number),
        "time": seconds(attempt.started_at),
        "statuscode": str(attempt.status_code or ""),
        "error": attempt.error,
        "seconds": f"{attempt.duration:.4f}",
    }


def render_task(record: TaskRecord, storage: Storage, model_description: str = "") -> dict[str, Any]:
    task = record.row
    owner, _, project = task.model_slug.partition("/")
    outputs = [render_output(output, task, storage) for output in record.outputs]
    ended = task.postprocess_end_time or task.cancel_time
    return {
        "id": str(task.id),
        "uuid": task.uuid,
        "socketaccesstoken": task.socket_token,
        "parameters": task.parameters,
        "debugoutput": task.debug_output,
        "debugerror": task.debug_error,
        "starttime": seconds(task.start_time),
        "endtime": seconds(task.end_time),
        "elapsedseconds": f"{(ended - task.create_time) if ended else 0:.4f}",
        "status": task.status,
        "createtime": seconds(task.create_time),
        "canceltime": seconds(task.cancel_time),
        "assigntime": seconds(task.assign_time),
        "accepttime": seconds(task.accept_time),
        "preprocessstarttime": seconds(task.preprocess_start_time),
        "preprocessendtime": seconds(task.preprocess_end_time),
        "postprocessstarttime": seconds(task.postprocess_start_time),
        "postprocessendtime": seconds(task.postprocess_end_time),
        "outputs": outputs,
        "size": str(sum(output.size for output in record.outputs)),
        "pexit": task.pexit,
        "totalcost": "0",
        "modeldescription": model_description,
        "modelslugowner": owner,
        "modelslugproject": project,
        "callbackurl": task.callback_url,
        "callbackstatus": record.callback.status if record.callback else "",
        "callbackattempts": [render_callback_attempt(attempt) for attempt in record.callback_attempts],
    }


def task_list_body(tasks: list[dict[str, Any]], total: int | None = None) -> dict[str, Any]:
    """The Task/Detail and Task/List answer, also the body of a callback."""
    return {"total": str(len(tasks) if total is None else total), "errors": [], "tasklist": tasks, "result": True}
