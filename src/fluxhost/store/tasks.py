"""The API's side of the task table: create, read, list, stop, forget files, measure. Tasks come
back as :class:`~fluxhost.store.records.TaskView` records.

Every change of status is one conditional UPDATE (``WHERE status IN <allowed>``), so a Kill and a
finishing worker can never both win. Plain Core statements, most built once: every call here sits
on a hot path (Detail polls), and composing a statement costs more than running it on SQLite.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Row, Select, Text, bindparam, case, cast, delete, func, insert, select, update

from fluxhost.limits import UnfinishedCounts
from fluxhost.orders import WorkOrder
from fluxhost.statuses import CANCELLABLE, KILLABLE, UNFINISHED, Outcome, Status
from fluxhost.store.database import Database
from fluxhost.store.deliveries import callback_of, owe_callback
from fluxhost.store.records import TaskView
from fluxhost.store.schema import outputs, random_token, tasks, unfinished_tallies

_INSERT_TASK = insert(tasks).returning(tasks.c.id)
_TASK_BY_ID = select(tasks).where(tasks.c.id == bindparam("task_id"))
_TASK_BY_TOKEN = select(tasks).where(tasks.c.socket_token == bindparam("token"))
_PROJECT_TASK_BY_ID = _TASK_BY_ID.where(tasks.c.project_id == bindparam("project_id"))
_PROJECT_TASK_BY_TOKEN = _TASK_BY_TOKEN.where(tasks.c.project_id == bindparam("project_id"))
_PROJECT_TASK_BY_UUID = select(tasks).where(tasks.c.uuid == bindparam("uuid"),
                                            tasks.c.project_id == bindparam("project_id"))
_OUTPUTS_OF_TASK = select(outputs).where(outputs.c.task_id == bindparam("task_id")).order_by(outputs.c.name)
_UNFINISHED_COUNTS = select(
    func.sum(case((tasks.c.api_key_id == bindparam("key"), 1), else_=0)).label("of_key"),
    func.sum(case((tasks.c.project_id == bindparam("project"), 1), else_=0)).label("of_project"),
    func.sum(case(((tasks.c.model_slug == bindparam("slug")) & (tasks.c.status == Status.QUEUE.value), 1),
                  else_=0)).label("queued_for_model"),
).where(tasks.c.status.in_([s.value for s in UNFINISHED]))
_TALLIED_COUNTS = select(unfinished_tallies.c.scope, unfinished_tallies.c.count).where(
    ((unfinished_tallies.c.scope == "key") & (unfinished_tallies.c.subject == bindparam("key")))
    | ((unfinished_tallies.c.scope == "project") & (unfinished_tallies.c.subject == bindparam("project")))
    | ((unfinished_tallies.c.scope == "queued") & (unfinished_tallies.c.subject == bindparam("slug"))))
_SORT_COLUMNS = {"id": tasks.c.id, "createtime": tasks.c.create_time, "status": tasks.c.status}


class StopResult(Enum):
    """What Cancel or Kill found."""

    STOPPED = "stopped"
    NOT_FOUND = "not_found"
    NOT_STOPPABLE = "not_stoppable"


@dataclass(frozen=True)
class TaskRef:
    """A task just created: what the Run answer needs."""

    id: int
    socket_token: str
    uuid: str


@dataclass(frozen=True)
class ModelStats:
    """What the tasks of one model say about it."""

    runs: int
    successes: int
    errors: int
    last_run_at: float | None
    mean_seconds: float | None  # claim to files stored, successful runs only


class TaskStore:
    def __init__(self, db: Database):
        self._db = db

    def create(
        self,
        project_id: int,
        model_slug: str,
        parameters: dict[str, Any],
        order: WorkOrder,
        callback_url: str = "",
        api_key_id: int | None = None,
    ) -> TaskRef:
        """A queued task; ``parameters`` are the inputs as sent, ``order`` what its worker runs,
        ``api_key_id`` the key it was made with."""
        token = random_token(30)
        task_uuid = str(uuid.uuid4())
        now = time.time()
        values = {
            "uuid": task_uuid, "socket_token": token, "project_id": project_id, "api_key_id": api_key_id,
            "model_slug": model_slug,
            "parameters": parameters, "work_order": order.encode(), "callback_url": callback_url,
            "status": Status.QUEUE.value, "debug_output": "", "debug_error": "", "attempts": 0,
            "create_time": now, "queued_time": now,
        }
        with self._db.write() as connection:
            task_id = connection.execute(_INSERT_TASK, values).scalar_one()
        return TaskRef(task_id, token, task_uuid)

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction that the writes made inside it on this thread join (a task's row
        and the request that asked for it): they commit together, or not at all."""
        return self._db.write()

    def unfinished_using(self, project_id: int, folder: str) -> int | None:
        """The id of a task of the project, queued or running, whose work order reads a file of
        ``folder`` (an upload's: a training's picture, a private LoRA adapter), or None. A file the
        order reads is a ``FileRef``: ``"folder": "..."`` in its JSON, where a prompt's text is not."""
        query = select(tasks.c.id).where(
            tasks.c.project_id == project_id,
            tasks.c.status.in_([s.value for s in UNFINISHED]),
            cast(tasks.c.work_order, Text).contains(json.dumps({"folder": folder})[1:-1], autoescape=True),
        ).limit(1)
        with self._db.read() as connection:
            return connection.execute(query).scalar()

    def unfinished_for_run(self, api_key_id: int, project_id: int, model_slug: str) -> UnfinishedCounts:
        """The key's and the project's queued or running tasks, and the model's queue. On SQLite
        three rows of the tallies its triggers keep; elsewhere one pass over the unfinished tasks
        (the status index)."""
        with self._db.read() as connection:
            if self._db.is_sqlite:
                tallies = dict(connection.execute(_TALLIED_COUNTS, {
                    "key": str(api_key_id), "project": str(project_id), "slug": model_slug}).all())
                return UnfinishedCounts(tallies.get("key", 0), tallies.get("project", 0), tallies.get("queued", 0))
            row = connection.execute(_UNFINISHED_COUNTS, {
                "key": api_key_id, "project": project_id, "slug": model_slug,
            }).one()
        return UnfinishedCounts(row.of_key or 0, row.of_project or 0, row.queued_for_model or 0)

    def get(self, task_id: int) -> TaskView | None:
        return self._read(_TASK_BY_ID, {"task_id": task_id})

    def find(self, project_id: int, *, task_id: int | None = None, token: str | None = None,
             uuid: str | None = None) -> TaskView | None:
        """A task of ``project_id`` by id, socket token or uuid; None when absent or another's."""
        if task_id is not None:
            return self._read(_PROJECT_TASK_BY_ID, {"project_id": project_id, "task_id": task_id})
        if token:
            return self._read(_PROJECT_TASK_BY_TOKEN, {"project_id": project_id, "token": token})
        if uuid:
            return self._read(_PROJECT_TASK_BY_UUID, {"project_id": project_id, "uuid": uuid})
        return None

    def find_by_token(self, token: str) -> TaskView | None:
        """Any project's task by its socket token: the token is the socket's only credential."""
        return self._read(_TASK_BY_TOKEN, {"token": token})

    def _read(self, statement: Select, parameters: dict[str, Any]) -> TaskView | None:
        with self._db.read() as connection:
            row = connection.execute(statement, parameters).first()
            if row is None:
                return None
            return _view(connection, row, connection.execute(_OUTPUTS_OF_TASK, {"task_id": row.id}).all())

    def list(
        self,
        project_id: int,
        *,
        start: int = 0,
        limit: int = 20,
        newest_first: bool = True,
        sort: str = "id",
        model_name: str = "",
        search: str = "",
    ) -> tuple[int, list[TaskView]]:
        """A page of the project's tasks and how many there are in all; ``model_name`` keeps the
        tasks whose model slug contains it (either spelling of version dots), ``search`` those
        whose prompt contains it, ignoring case."""
        where = [tasks.c.project_id == project_id]
        if search.strip():
            prompt = func.lower(tasks.c.parameters["prompt"].as_string())
            where.append(prompt.contains(search.strip().lower(), autoescape=True))
        if model_name:
            spelled = func.replace(func.lower(tasks.c.model_slug), ".", "-")
            where.append(spelled.contains(model_name.strip().lower().replace(".", "-"), autoescape=True))
        column = _SORT_COLUMNS.get(sort, tasks.c.id)
        order = [column.desc(), tasks.c.id.desc()] if newest_first else [column.asc(), tasks.c.id.asc()]
        with self._db.read() as connection:
            total = connection.execute(select(func.count()).select_from(tasks).where(*where)).scalar_one()
            rows = connection.execute(select(tasks).where(*where).order_by(*order).offset(start).limit(limit)).all()
            files: dict[int, list[Row]] = {row.id: [] for row in rows}
            if rows:
                query = select(outputs).where(outputs.c.task_id.in_(list(files))).order_by(outputs.c.name)
                for output in connection.execute(query):
                    files[output.task_id].append(output)
            return total, [_view(connection, row, files[row.id]) for row in rows]

    def model_stats(self) -> dict[str, ModelStats]:
        """Run counts and the mean compute time of successful runs, per model slug."""
        succeeded = tasks.c.outcome == Outcome.COMPLETED.value
        failed = tasks.c.outcome.in_([Outcome.FAILED.value, Outcome.MODERATED.value])
        query = select(
            tasks.c.model_slug,
            func.count(),
            func.count().filter(succeeded),
            func.count().filter(failed),
            func.max(tasks.c.create_time),
            func.avg(tasks.c.postprocess_end_time - tasks.c.accept_time).filter(succeeded),
        ).group_by(tasks.c.model_slug)
        with self._db.read() as connection:
            return {row[0]: ModelStats(*row[1:]) for row in connection.execute(query)}

    def cancel(self, project_id: int, task_id: int) -> StopResult:
        """Cancel a task no worker has claimed: it will never run."""
        return self._stop(project_id, task_id, CANCELLABLE)

    def kill(self, project_id: int, task_id: int) -> StopResult:
        """Stop a queued or running task; its worker notices at the next denoising step."""
        return self._stop(project_id, task_id, KILLABLE)

    def _stop(self, project_id: int, task_id: int, allowed: frozenset[Status]) -> StopResult:
        now = time.time()
        mine = (tasks.c.id == task_id) & (tasks.c.project_id == project_id)
        with self._db.write() as connection:
            changed = connection.execute(
                update(tasks)
                .where(mine, tasks.c.status.in_([s.value for s in allowed]))
                .values(status=Status.CANCEL.value, cancel_time=now, end_time=func.coalesce(tasks.c.end_time, now),
                        outcome=Outcome.STOPPED.value, lease_expires_at=None)
            ).rowcount
            if changed:
                owe_callback(connection, task_id, now)
                return StopResult.STOPPED
            exists = connection.execute(select(tasks.c.id).where(mine)).first()
            return StopResult.NOT_STOPPABLE if exists else StopResult.NOT_FOUND

    def forget_inputs(self, task_id: int) -> None:
        """Forget a task's input files (its work order no longer names them), once they are
        removed from file storage."""
        with self._db.write() as connection:
            stored = connection.execute(select(tasks.c.work_order).where(tasks.c.id == task_id)).scalar_one_or_none()
            if stored and stored.get("input_images"):
                connection.execute(update(tasks).where(tasks.c.id == task_id)
                                   .values(work_order={**stored, "input_images": []}))

    def delete_outputs(self, task_id: int) -> None:
        """Forget a task's outputs (the record stays), once they are removed from file storage."""
        with self._db.write() as connection:
            connection.execute(delete(outputs).where(outputs.c.task_id == task_id))


def _view(connection: Connection, row: Row, files: list[Row]) -> TaskView:
    """A task's record, with its callback's delivery read too when it has a callback URL."""
    if not row.callback_url:
        return TaskView.of(row, files)
    return TaskView.of(row, files, *callback_of(connection, row.id))
