"""Persistence of tasks and their outputs (SQLAlchemy; SQLite or PostgreSQL).

Every change of status is one conditional UPDATE (``WHERE status = <expected>``), so two
workers, or a worker and a Cancel, can never both win: whoever's statement matches first owns
the change and the other sees ``False``.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Row, Select, Update, bindparam, delete, func, insert, literal, or_, select, update

from fluxhost.auth import random_token
from fluxhost.db import CallbackAttempt, CallbackDelivery, Database, Output, Task
from fluxhost.tasks import CANCELLABLE, KILLABLE, RUNNING, STOPPED_PEXIT, TERMINAL, Status, previous_status, stages

tasks = Task.__table__
outputs = Output.__table__
deliveries = CallbackDelivery.__table__
attempts = CallbackAttempt.__table__

_TIME_COLUMN = {
    Status.ACCEPT: "accept_time",
    Status.PREPROCESS_START: "preprocess_start_time",
    Status.PREPROCESS_END: "preprocess_end_time",
    Status.ASSIGN: "assign_time",
    Status.START: "start_time",
    Status.END: "end_time",
    Status.POSTPROCESS_START: "postprocess_start_time",
    Status.POSTPROCESS_END: "postprocess_end_time",
    Status.CANCEL: "cancel_time",
}


# Hot-path statements, built once: composing a statement costs more than running it on SQLite.
_INSERT_TASK = insert(tasks).returning(tasks.c.id)
_TASK_BY_ID = select(tasks).where(tasks.c.id == bindparam("task_id"))
_TASK_BY_TOKEN = select(tasks).where(tasks.c.socket_token == bindparam("token"))
_PROJECT_TASK_BY_ID = _TASK_BY_ID.where(tasks.c.project_id == bindparam("project_id"))
_PROJECT_TASK_BY_TOKEN = _TASK_BY_TOKEN.where(tasks.c.project_id == bindparam("project_id"))
_OUTPUTS_OF_TASK = select(outputs).where(outputs.c.task_id == bindparam("task_id")).order_by(outputs.c.name)
_DELIVERY_OF_TASK = select(deliveries).where(deliveries.c.task_id == bindparam("task_id"))
_ATTEMPTS_OF_DELIVERY = (
    select(attempts).where(attempts.c.delivery_id == bindparam("delivery_id")).order_by(attempts.c.number)
)
_OLDEST_QUEUED = (
    select(tasks.c.id)
    .where(tasks.c.status == Status.QUEUE.value, tasks.c.model_slug.in_(bindparam("slugs", expanding=True)))
    .order_by(tasks.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)


@functools.cache
def _claim_statement(through: Status) -> Update:
    """``UPDATE`` claiming the oldest queued task and walking it from ``task_accept`` to
    ``through``, every stage stamped with ``now``."""
    return (
        update(tasks)
        .where(tasks.c.id == _OLDEST_QUEUED, tasks.c.status == Status.QUEUE.value)
        .values(status=through.value, worker_id=bindparam("worker_id"), lease_expires_at=bindparam("lease_until"),
                attempts=tasks.c.attempts + 1,
                **{_TIME_COLUMN[stage]: bindparam("now") for stage in stages(Status.ACCEPT, through)})
        .returning(tasks.c.id, tasks.c.socket_token, tasks.c.model_slug, tasks.c.request)
    )


_RENEW_LEASE = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.worker_id == bindparam("worker_id"),
           tasks.c.status.in_([s.value for s in RUNNING]))
    .values(lease_expires_at=bindparam("lease_until"))
)
_FINISH = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.status == Status.POSTPROCESS_START.value)
    .values(status=Status.POSTPROCESS_END.value, postprocess_end_time=bindparam("now"), pexit="0",
            debug_output=bindparam("debug_output"), lease_expires_at=None)
)
_INSERT_OUTPUT = insert(outputs)
_OWE_CALLBACK = insert(deliveries).from_select(
    ["task_id", "url", "status", "attempts", "next_attempt_at", "created_at"],
    select(tasks.c.id, tasks.c.callback_url, literal("pending"), literal(0), bindparam("now"), bindparam("now"))
    .where(tasks.c.id == bindparam("task_id"), tasks.c.callback_url != ""),
)


@functools.cache
def _advance_statement(statuses: tuple[Status, ...], renews_lease: bool) -> Update:
    """``UPDATE`` moving a task through consecutive ``statuses``, stamping each with ``now``."""
    if statuses != stages(statuses[0], statuses[-1]):
        raise ValueError(f"not consecutive stages of the worker path: {statuses}")
    values: dict[str, Any] = {_TIME_COLUMN[status]: bindparam("now") for status in statuses}
    if renews_lease:
        values["lease_expires_at"] = bindparam("lease_until")
    return (
        update(tasks)
        .where(tasks.c.id == bindparam("task_id"), tasks.c.status == previous_status(statuses[0]).value)
        .values(status=statuses[-1].value, **values)
    )


class StopResult(Enum):
    """What Cancel or Kill found."""

    STOPPED = "stopped"
    NOT_FOUND = "not_found"
    NOT_STOPPABLE = "not_stoppable"


@dataclass(frozen=True)
class NewOutput:
    """A file a worker stored, to be recorded on its task."""

    name: str
    content_type: str
    size: int
    folder: str


@dataclass(frozen=True)
class TaskRecord:
    """A task as read back: its row (columns as attributes), its outputs' rows, and its
    callback's delivery and attempts when it has a callback URL."""

    row: Row
    outputs: list[Row]
    callback: Row | None = None
    callback_attempts: list[Row] = field(default_factory=list)


@dataclass(frozen=True)
class TaskRef:
    """A task just created: what the Run answer needs."""

    id: int
    socket_token: str


@dataclass(frozen=True)
class ClaimedTask:
    """What a worker needs of the task it claimed."""

    id: int
    socket_token: str
    model_slug: str
    request: dict[str, Any]


@dataclass(frozen=True)
class ModelStats:
    """What the tasks of one model say about it."""

    runs: int
    successes: int
    errors: int
    last_run_at: float | None
    mean_seconds: float | None  # claim to files stored, successful runs only


@dataclass(frozen=True)
class Recovery:
    """What a recovery sweep did with tasks whose worker went away."""

    requeued: list[int]
    failed: list[int]


class TaskStore:
    """Plain Core statements: every call here sits on a hot path (Detail polls, the worker)."""

    def __init__(self, db: Database):
        self._db = db

    # --- the API's side -------------------------------------------------------------------

    def create(
        self,
        project_id: int,
        model_slug: str,
        parameters: dict[str, Any],
        request: dict[str, Any],
        callback_url: str = "",
    ) -> TaskRef:
        token = random_token(30)
        values = {
            "uuid": str(uuid.uuid4()), "socket_token": token, "project_id": project_id, "model_slug": model_slug,
            "parameters": parameters, "request": request, "callback_url": callback_url,
            "status": Status.QUEUE.value, "pexit": "", "debug_output": "", "debug_error": "", "attempts": 0,
            "create_time": time.time(),
        }
        with self._db.write() as connection:
            task_id = connection.execute(_INSERT_TASK, values).scalar_one()
        return TaskRef(task_id, token)

    def get(self, task_id: int) -> TaskRecord | None:
        return self._read(_TASK_BY_ID, {"task_id": task_id})

    def find(self, project_id: int, *, task_id: int | None = None, token: str | None = None) -> TaskRecord | None:
        """A task of ``project_id`` by id or socket token; None when absent or another's."""
        if task_id is not None:
            return self._read(_PROJECT_TASK_BY_ID, {"project_id": project_id, "task_id": task_id})
        if token:
            return self._read(_PROJECT_TASK_BY_TOKEN, {"project_id": project_id, "token": token})
        return None

    def find_by_token(self, token: str) -> TaskRecord | None:
        """Any project's task by its socket token: the token is the socket's only credential."""
        return self._read(_TASK_BY_TOKEN, {"token": token})

    def _read(self, statement: Select, parameters: dict[str, Any]) -> TaskRecord | None:
        with self._db.read() as connection:
            row = connection.execute(statement, parameters).first()
            if row is None:
                return None
            record = TaskRecord(row, connection.execute(_OUTPUTS_OF_TASK, {"task_id": row.id}).all())
            return self._with_callback(connection, record) if row.callback_url else record

    def _with_callback(self, connection: Connection, record: TaskRecord) -> TaskRecord:
        delivery = connection.execute(_DELIVERY_OF_TASK, {"task_id": record.row.id}).first()
        if delivery is None:
            return record
        tried = connection.execute(_ATTEMPTS_OF_DELIVERY, {"delivery_id": delivery.id}).all()
        return TaskRecord(record.row, record.outputs, delivery, tried)

    def list(
        self,
        project_id: int,
        *,
        start: int = 0,
        limit: int = 20,
        newest_first: bool = True,
        sort: str = "id",
        model_name: str = "",
    ) -> tuple[int, list[TaskRecord]]:
        """A page of the project's tasks and how many there are in all; ``model_name`` keeps the
        tasks whose model slug contains it (either spelling of version dots)."""
        where = [tasks.c.project_id == project_id]
        if model_name:
            spelled = func.replace(func.lower(tasks.c.model_slug), ".", "-")
            where.append(spelled.contains(model_name.strip().lower().replace(".", "-"), autoescape=True))
        column = {"id": tasks.c.id, "createtime": tasks.c.create_time, "status": tasks.c.status}.get(sort, tasks.c.id)
        order = [column.desc(), tasks.c.id.desc()] if newest_first else [column.asc(), tasks.c.id.asc()]
        with self._db.read() as connection:
            total = connection.execute(select(func.count()).select_from(tasks).where(*where)).scalar_one()
            rows = connection.execute(select(tasks).where(*where).order_by(*order).offset(start).limit(limit)).all()
            files: dict[int, list[Row]] = {row.id: [] for row in rows}
            if rows:
                query = select(outputs).where(outputs.c.task_id.in_(list(files))).order_by(outputs.c.name)
                for output in connection.execute(query):
                    files[output.task_id].append(output)
            records = [TaskRecord(row, files[row.id]) for row in rows]
            return total, [self._with_callback(connection, r) if r.row.callback_url else r for r in records]

    def model_stats(self) -> dict[str, ModelStats]:
        """Run counts and the mean compute time of successful runs, per model slug."""
        ended = tasks.c.status == Status.POSTPROCESS_END.value
        succeeded = ended & (tasks.c.pexit == "0")
        query = select(
            tasks.c.model_slug,
            func.count(),
            func.count().filter(succeeded),
            func.count().filter(ended & (tasks.c.pexit != "0")),
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
        with self._db.write() as connection:
            changed = connection.execute(
                update(Task)
                .where(Task.id == task_id, Task.project_id == project_id, Task.status.in_([s.value for s in allowed]))
                .values(status=Status.CANCEL.value, cancel_time=now, end_time=func.coalesce(Task.end_time, now),
                        pexit=STOPPED_PEXIT, lease_expires_at=None)
            ).rowcount
            if changed:
                _owe_callback(connection, task_id, now)
                return StopResult.STOPPED
            exists = connection.execute(
                select(Task.id).where(Task.id == task_id, Task.project_id == project_id)
            ).first()
            return StopResult.NOT_STOPPABLE if exists else StopResult.NOT_FOUND

    def delete_outputs(self, task_id: int) -> list[Row]:
        """Forget a task's outputs (the record stays); returns what to remove from storage."""
        with self._db.write() as connection:
            removed = connection.execute(select(outputs).where(outputs.c.task_id == task_id)).all()
            connection.execute(delete(outputs).where(outputs.c.task_id == task_id))
        return removed

    # --- the worker's side ----------------------------------------------------------------

    def claim_next(
        self, worker_id: str, model_slugs: list[str], lease_seconds: float, through: Status = Status.ACCEPT
    ) -> ClaimedTask | None:
        """Atomically take the oldest queued task of these models, moving it through ``task_accept``
        up to ``through`` (a worker with nothing to do in between saves the writes)."""
        now = time.time()
        with self._db.write() as connection:
            claimed = connection.execute(
                _claim_statement(through),
                {"slugs": model_slugs, "now": now, "worker_id": worker_id, "lease_until": now + lease_seconds},
            ).first()
        return ClaimedTask(*claimed) if claimed is not None else None

    def advance(self, task_id: int, *statuses: Status, lease_seconds: float | None = None) -> bool:
        """Move a task along the worker path through ``statuses`` (consecutive, each stamped with
        the time now) in one statement; False if it was cancelled or killed meanwhile."""
        now = time.time()
        lease_until = None if lease_seconds is None else now + lease_seconds
        with self._db.write() as connection:
            moved = connection.execute(
                _advance_statement(statuses, lease_seconds is not None),
                {"task_id": task_id, "now": now, "lease_until": lease_until},
            )
            return bool(moved.rowcount)

    def renew_lease(self, task_id: int, worker_id: str, lease_seconds: float) -> bool:
        """Extend our claim; False when the task is no longer ours to run (killed, taken over)."""
        with self._db.write() as connection:
            renewed = connection.execute(
                _RENEW_LEASE, {"task_id": task_id, "worker_id": worker_id, "lease_until": time.time() + lease_seconds}
            )
            return bool(renewed.rowcount)

    def finish(self, task_id: int, outputs: list[NewOutput], debug_output: str) -> bool:
        """``task_postprocess_start`` -> ``task_postprocess_end`` with pexit 0 and the outputs."""
        now = time.time()
        with self._db.write() as connection:
            done = connection.execute(
                _FINISH, {"task_id": task_id, "now": now, "debug_output": debug_output}
            ).rowcount
            if done:
                _owe_callback(connection, task_id, now)
            if done and outputs:
                connection.execute(
                    _INSERT_OUTPUT,
                    [
                        {"id": uuid.uuid4().hex, "task_id": task_id, "name": output.name,
                         "content_type": output.content_type, "size": output.size, "folder": output.folder,
                         "access_key": random_token(30), "added_at": now}
                        for output in outputs
                    ],
                )
            return bool(done)

    def fail(self, task_id: int, error: str, debug_output: str = "") -> bool:
        """End a running task as failed: ``task_postprocess_end``, pexit 1, the reason kept."""
        now = time.time()
        with self._db.write() as connection:
            failed = connection.execute(
                update(Task)
                .where(Task.id == task_id, Task.status.in_([s.value for s in KILLABLE]))
                .values(status=Status.POSTPROCESS_END.value, pexit="1", debug_error=error,
                        debug_output=debug_output, postprocess_end_time=now,
                        end_time=func.coalesce(Task.end_time, now), lease_expires_at=None)
            ).rowcount
            if failed:
                _owe_callback(connection, task_id, now)
            return bool(failed)

    def set_debug_output(self, task_id: int, text: str) -> None:
        with self._db.write() as connection:
            connection.execute(update(Task).where(Task.id == task_id).values(debug_output=text))

    def claiming_workers(self) -> set[str]:
        """The workers that hold claimed, unfinished tasks."""
        with self._db.read() as connection:
            return set(connection.execute(
                select(Task.worker_id).distinct().where(Task.status.in_([s.value for s in RUNNING]))
            ).scalars())

    def recover(
        self, max_attempts: int, *, dead_workers: Collection[str] = (), alive_worker: str | None = None
    ) -> Recovery:
        """Take back tasks whose worker is gone: queue them again, or fail them for good once they
        have had ``max_attempts`` runs. Gone means: one of ``dead_workers`` (known dead, whatever
        the lease says), or a lease run out; the tasks of ``alive_worker`` (the caller's own,
        running right now) are never taken."""
        now = time.time()
        requeued: list[int] = []
        failed: list[int] = []
        gone = Task.lease_expires_at < now
        if dead_workers:
            gone = or_(gone, Task.worker_id.in_(list(dead_workers)))
        where = [Task.status.in_([s.value for s in RUNNING]), gone]
        if alive_worker:
            where.append(Task.worker_id != alive_worker)
        with self._db.read() as connection:
            lost = connection.execute(select(Task.id, Task.attempts).where(*where)).all()
        for task_id, attempts in lost:
            if attempts >= max_attempts:
                message = f"The worker running this task was lost {attempts} times; giving up."
                if self.fail(task_id, message):
                    failed.append(task_id)
                continue
            with self._db.write() as connection:
                changed = connection.execute(
                    update(Task)
                    .where(Task.id == task_id, *where)
                    .values(status=Status.QUEUE.value, worker_id=None, lease_expires_at=None,
                            **{column: None for column in _TIME_COLUMN.values()})
                ).rowcount
            if changed:
                requeued.append(task_id)
        return Recovery(requeued, failed)


def _owe_callback(connection: Connection, task_id: int, now: float) -> None:
    """Record, in the transaction that ends the task, the callback it owes (if it has a URL):
    a crash can then lose neither the task's end nor its callback."""
    connection.execute(_OWE_CALLBACK, {"task_id": task_id, "now": now})


def is_terminal(task: TaskRecord) -> bool:
    return Status(task.row.status) in TERMINAL
