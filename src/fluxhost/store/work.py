"""The worker's side of the task table: claim, advance, renew, finish, fail, recover.

A worker claims a task by one conditional UPDATE on the oldest queued row, so a wake-up delivered
twice runs the task once, and every later move is conditional on the status it expects: when a
Kill got there first, the worker's statement matches nothing and it learns it lost the task.
"""

from __future__ import annotations

import functools
import itertools
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Row, Update, bindparam, func, insert, or_, select, update

from fluxhost.orders import WorkOrder
from fluxhost.statuses import KILLABLE, RUNNING, UNFINISHED, Outcome, Status, previous_status, stages
from fluxhost.storage.base import new_folder
from fluxhost.store.database import DATABASE_FAULTS, Database
from fluxhost.store.deliveries import owe_callback
from fluxhost.store.schema import TIME_COLUMN, outputs, random_token, tasks, uploads
from fluxhost.store.uploads import NewUpload, upload_record

_OLDEST_QUEUED = (
    select(tasks.c.id)
    .where(tasks.c.status == Status.QUEUE.value, tasks.c.model_slug.in_(bindparam("slugs", expanding=True)))
    .order_by(tasks.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_RENEW_LEASE = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.worker_id == bindparam("claimant"),
           tasks.c.status.in_([s.value for s in RUNNING]))
    .values(lease_expires_at=bindparam("lease_until"))
)
_FINISH = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.status == Status.START.value,
           tasks.c.worker_id == bindparam("claimant"))
    .values(status=Status.POSTPROCESS_END.value, end_time=bindparam("generated_at"),
            postprocess_start_time=bindparam("generated_at"), postprocess_end_time=bindparam("now"),
            outcome=Outcome.COMPLETED.value,
            debug_output=bindparam("debug_output"), lease_expires_at=None)
)
_INSERT_OUTPUT = insert(outputs)
_RECORD_SENT = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.queued_time <= bindparam("sent_at"))
    .values(message_time=bindparam("sent_at"))
)


_QUEUED_OF_MODEL = (
    select(tasks.c.id, tasks.c.work_order)
    .where(tasks.c.status == Status.QUEUE.value, tasks.c.model_slug == bindparam("slug"))
    .order_by(tasks.c.id)
    .limit(bindparam("limit"))
)


def _queued_again(now: float) -> dict[str, object]:
    """The columns of a task back in the queue at ``now``, as if never claimed: no worker, no
    lease, no stage reached, no message sent for this queueing."""
    return {"status": Status.QUEUE.value, "worker_id": None, "lease_expires_at": None, "message_time": None,
            "queued_time": now, **{column: None for column in TIME_COLUMN.values()}}


@functools.cache
def _claim_statement(through: Status, by_id: bool = False) -> Update:
    """``UPDATE`` claiming the oldest queued task (or, ``by_id``, the queued task ``task_id``) and
    walking it from ``task_accept`` to ``through``, every stage stamped with ``now``."""
    chosen = bindparam("task_id") if by_id else _OLDEST_QUEUED
    return (
        update(tasks)
        .where(tasks.c.id == chosen, tasks.c.status == Status.QUEUE.value)
        .values(status=through.value, worker_id=bindparam("claimant"), lease_expires_at=bindparam("lease_until"),
                attempts=tasks.c.attempts + 1, previous_files_folder=tasks.c.files_folder,
                files_folder=bindparam("folder"),
                **{TIME_COLUMN[stage]: bindparam("now") for stage in stages(Status.ACCEPT, through)})
        .returning(tasks.c.id, tasks.c.socket_token, tasks.c.model_slug, tasks.c.work_order, tasks.c.create_time,
                   tasks.c.files_folder, tasks.c.previous_files_folder,
                   (tasks.c.callback_url != "").label("owes_callback"))
    )


@functools.cache
def _advance_statement(statuses: tuple[Status, ...], renews_lease: bool) -> Update:
    """``UPDATE`` moving a task through consecutive ``statuses``, stamping each with ``now``."""
    if statuses != stages(statuses[0], statuses[-1]):
        raise ValueError(f"not consecutive stages of the worker path: {statuses}")
    values = {TIME_COLUMN[status]: bindparam("now") for status in statuses}
    if renews_lease:
        values["lease_expires_at"] = bindparam("lease_until")
    return (
        update(tasks)
        .where(tasks.c.id == bindparam("task_id"), tasks.c.status == previous_status(statuses[0]).value,
               tasks.c.worker_id == bindparam("holder"))
        .values(status=statuses[-1].value, **values)
    )


@dataclass(frozen=True)
class ClaimedTask:
    """What a worker needs of the task it claimed."""

    id: int
    socket_token: str
    model_slug: str
    order: WorkOrder
    created_at: float
    files_folder: str  # this run's, new at each claim: a run that outlived its claim never touches the next's
    previous_files_folder: str | None  # the run before's: what it wrote if it died unrecorded
    owes_callback: bool = False  # it has a callback URL: its end owes a delivery

    @classmethod
    def of(cls, row: Row) -> ClaimedTask:
        return cls(row.id, row.socket_token, row.model_slug, WorkOrder.decode(row.work_order), row.create_time,
                   row.files_folder, row.previous_files_folder, bool(row.owes_callback))


@dataclass(frozen=True)
class NewOutput:
    """A file a worker stored, to be recorded on its task."""

    name: str
    content_type: str
    size: int
    folder: str


def _insert_outputs(connection: Connection, task_id: int, files: list[NewOutput], now: float) -> None:
    if files:
        connection.execute(_INSERT_OUTPUT, [
            {"id": uuid.uuid4().hex, "task_id": task_id, "name": output.name, "content_type": output.content_type,
             "size": output.size, "folder": output.folder, "access_key": random_token(30), "added_at": now}
            for output in files
        ])


@dataclass(frozen=True)
class GivenUp:
    """A task a recovery sweep failed for good, as its followers are told of it."""

    task_id: int
    socket_token: str
    reason: str
    owes_callback: bool


@dataclass(frozen=True)
class Recovery:
    """What a recovery sweep did with tasks whose worker went away."""

    requeued: list[tuple[int, str]]  # (task id, model slug): each needs a worker again
    failed: list[GivenUp]
    failed_folders: list[str] = field(default_factory=list)  # where their lost runs may have left files


class WorkStore:
    def __init__(self, db: Database):
        self._db = db

    def claim_next(
        self, worker_id: str, model_slugs: list[str], lease_seconds: float, through: Status = Status.ACCEPT
    ) -> ClaimedTask | None:
        """Atomically take the oldest queued task of these models, moving it through ``task_accept``
        up to ``through`` (a worker with nothing to do in between saves the writes)."""
        now = time.time()
        with self._db.write() as connection:
            claimed = connection.execute(
                _claim_statement(through),
                {"slugs": model_slugs, "now": now, "claimant": worker_id, "lease_until": now + lease_seconds,
                 "folder": new_folder()},
            ).first()
        return None if claimed is None else ClaimedTask.of(claimed)

    def claim_more(
        self, worker_id: str, model_slug: str, lease_seconds: float, limit: int, joins: Callable[[WorkOrder], bool],
        through: Status = Status.ACCEPT,
    ) -> list[ClaimedTask]:
        """Up to ``limit`` more queued tasks of ``model_slug`` whose orders ``joins`` accepts, oldest
        first, each claimed as :meth:`claim_next` does (a task another worker took first is
        skipped), all in one write. Orders are read only until ``limit`` join. A database fault
        claims none: the task claimed before runs alone (raised, it would be held by a worker that
        dropped it), and these stay queued."""
        try:
            with self._db.read() as connection:
                queued = connection.execute(_QUEUED_OF_MODEL, {"slug": model_slug, "limit": limit * 8}).all()
            chosen = list(itertools.islice(
                (task_id for task_id, stored in queued if joins(WorkOrder.decode(stored))), limit))
            if not chosen:
                return []
            with self._db.write():
                claimed = [self.claim_queued(task_id, worker_id, lease_seconds, through) for task_id in chosen]
        except DATABASE_FAULTS:
            return []
        return [task for task in claimed if task is not None]

    def claim_queued(
        self, task_id: int, worker_id: str, lease_seconds: float, through: Status = Status.ACCEPT
    ) -> ClaimedTask | None:
        """Atomically take task ``task_id`` as :meth:`claim_next` does, if it is still queued; None
        when it is not (taken by another worker, cancelled, finished, or never committed)."""
        now = time.time()
        with self._db.write() as connection:
            row = connection.execute(
                _claim_statement(through, by_id=True),
                {"task_id": task_id, "now": now, "claimant": worker_id, "lease_until": now + lease_seconds,
                 "folder": new_folder()},
            ).first()
        return None if row is None else ClaimedTask.of(row)

    def advance(self, task_id: int, worker_id: str, *statuses: Status, lease_seconds: float | None = None) -> bool:
        """Move a task ``worker_id`` holds along the worker path through ``statuses`` (consecutive,
        each stamped with the time now) in one statement; False if it was cancelled or killed
        meanwhile, or is no longer that worker's (its lease ran out and another took it)."""
        now = time.time()
        lease_until = None if lease_seconds is None else now + lease_seconds
        with self._db.write() as connection:
            moved = connection.execute(
                _advance_statement(statuses, lease_seconds is not None),
                {"task_id": task_id, "holder": worker_id, "now": now, "lease_until": lease_until},
            )
            return bool(moved.rowcount)

    def advance_each(self, task_ids: Sequence[int], worker_id: str, *statuses: Status,
                     lease_seconds: float | None = None) -> list[bool]:
        """:meth:`advance` for each of ``task_ids`` (a batch), in one write; whether each moved."""
        with self._db.write():
            return [self.advance(task_id, worker_id, *statuses, lease_seconds=lease_seconds) for task_id in task_ids]

    def renew_lease(self, task_id: int, worker_id: str, lease_seconds: float) -> bool:
        """Extend our claim; False when the task is no longer ours to run (killed, taken over)."""
        with self._db.write() as connection:
            renewed = connection.execute(
                _RENEW_LEASE, {"task_id": task_id, "claimant": worker_id, "lease_until": time.time() + lease_seconds}
            )
            return bool(renewed.rowcount)

    def finish(self, task_id: int, worker_id: str, files: list[NewOutput], debug_output: str,
               generated_at: float, kept: tuple[str, NewUpload] | None = None, owes_callback: bool = True) -> bool:
        """``task_start`` -> ``task_postprocess_end``, completed, with the outputs, in one write, if
        ``worker_id`` still holds the task: ``task_end`` and ``task_postprocess_start`` are stamped
        with ``generated_at`` (when the images were ready), ``task_postprocess_end`` now (they are
        stored). ``kept``: (id, upload) of a file the task made that becomes one of its project's
        uploads (a trained LoRA adapter), recorded in the same write. ``owes_callback``: False when
        the claim said the task has no callback URL, sparing the statement that owes one."""
        now = time.time()
        with self._db.write() as connection:
            done = connection.execute(_FINISH, {
                "task_id": task_id, "claimant": worker_id, "now": now, "generated_at": generated_at,
                "debug_output": debug_output,
            }).rowcount
            if not done:
                return False
            if owes_callback:
                owe_callback(connection, task_id, now)
            _insert_outputs(connection, task_id, files, now)
            if kept is not None:
                connection.execute(insert(uploads), upload_record(kept[1], kept[0], now))
            return True

    def add_outputs(self, task_id: int, files: list[NewOutput]) -> None:
        """Record files of a task that ended without finishing (a killed training's checkpoints)."""
        with self._db.write() as connection:
            _insert_outputs(connection, task_id, files, time.time())

    def fail(self, task_id: int, error: str, debug_output: str = "", worker_id: str | None = None,
             outcome: Outcome = Outcome.FAILED) -> bool:
        """End an unfinished task as failed or moderated (``outcome``; only while ``worker_id``
        holds it, when given), in ``task_postprocess_end``, the reason kept."""
        now = time.time()
        held = [] if worker_id is None else [tasks.c.worker_id == worker_id]
        with self._db.write() as connection:
            failed = connection.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.status.in_([s.value for s in KILLABLE]), *held)
                .values(status=Status.POSTPROCESS_END.value, outcome=outcome.value, debug_error=error,
                        debug_output=debug_output, postprocess_end_time=now,
                        end_time=func.coalesce(tasks.c.end_time, now), lease_expires_at=None)
            ).rowcount
            if failed:
                owe_callback(connection, task_id, now)
            return bool(failed)

    def set_debug_output(self, task_id: int, text: str) -> None:
        with self._db.write() as connection:
            connection.execute(update(tasks).where(tasks.c.id == task_id).values(debug_output=text))

    def claiming_workers(self) -> set[str]:
        """The workers that hold claimed, unfinished tasks."""
        with self._db.read() as connection:
            return set(connection.execute(
                select(tasks.c.worker_id).distinct().where(tasks.c.status.in_([s.value for s in RUNNING]))
            ).scalars())

    def unfinished_by_status(self) -> list[tuple[str, str, int]]:
        """(status, model slug, count) of the tasks queued or running now."""
        with self._db.read() as connection:
            return [tuple(row) for row in connection.execute(
                select(tasks.c.status, tasks.c.model_slug, func.count())
                .where(tasks.c.status.in_([s.value for s in UNFINISHED])).group_by(tasks.c.status, tasks.c.model_slug)
            )]

    def record_sent(self, sent: Collection[tuple[int, float]]) -> None:
        """Note that a broker took a message for each (task id, when it was sent): on a task queued
        again since (its message was for the run before), nothing is noted."""
        with self._db.write() as connection:
            connection.execute(_RECORD_SENT, [{"task_id": task_id, "sent_at": at} for task_id, at in sent])

    def forget_sent(self, sent_before: float) -> int:
        """Take back the record of the messages sent before ``sent_before`` for tasks still queued
        (their broker restarted since, and may have lost them): :meth:`unsent` lists those tasks
        again. How many were taken back."""
        with self._db.write() as connection:
            return connection.execute(
                update(tasks)
                .where(tasks.c.status == Status.QUEUE.value, tasks.c.message_time < sent_before)
                .values(message_time=None)
            ).rowcount

    def unsent(self, queued_before: float, limit: int = 1000) -> list[tuple[int, str]]:
        """(task id, model slug) of the oldest ``limit`` tasks queued (or queued again) before
        ``queued_before`` and still queued, for which no process recorded a message taken by a broker."""
        with self._db.read() as connection:
            rows = connection.execute(
                select(tasks.c.id, tasks.c.model_slug)
                .where(tasks.c.status == Status.QUEUE.value, tasks.c.message_time.is_(None),
                       tasks.c.queued_time < queued_before)
                .order_by(tasks.c.id).limit(limit)
            ).all()
        return [(task_id, slug) for task_id, slug in rows]

    def release(self, worker_id: str, task_ids: Collection[int] | None = None) -> list[tuple[int, str]]:
        """Queue again, as if never claimed, the unfinished tasks ``worker_id`` holds (of
        ``task_ids``, default all): a worker shutting down, or whose run the database failed, hands
        back what it could not finish; the interrupted run is not counted against the task's
        attempts. Returns (task id, model slug) of each."""
        held = [tasks.c.worker_id == worker_id, tasks.c.status.in_([s.value for s in RUNNING])]
        if task_ids is not None:
            held.append(tasks.c.id.in_(list(task_ids)))
        with self._db.write() as connection:
            released = connection.execute(
                update(tasks).where(*held)
                .values(**_queued_again(time.time()), attempts=tasks.c.attempts - 1)
                .returning(tasks.c.id, tasks.c.model_slug)
            ).all()
        return [(task_id, slug) for task_id, slug in released]

    def recover(
        self, max_attempts: int, *, dead_workers: Collection[str] = (), alive_worker: str | None = None
    ) -> Recovery:
        """Take back tasks whose worker is gone: queue them again, or fail them for good once they
        have had ``max_attempts`` runs. Gone means: one of ``dead_workers`` (known dead, whatever
        the lease says), or a lease run out; the tasks of ``alive_worker`` (the caller's own,
        running right now) are never taken."""
        now = time.time()
        requeued: list[tuple[int, str]] = []
        failed: list[GivenUp] = []
        gone = tasks.c.lease_expires_at < now
        if dead_workers:
            gone = or_(gone, tasks.c.worker_id.in_(list(dead_workers)))
        where = [tasks.c.status.in_([s.value for s in RUNNING]), gone]
        if alive_worker:
            where.append(tasks.c.worker_id != alive_worker)
        with self._db.read() as connection:
            lost: list[Row] = connection.execute(
                select(tasks.c.id, tasks.c.attempts, tasks.c.model_slug, tasks.c.socket_token, tasks.c.callback_url,
                       tasks.c.files_folder, tasks.c.previous_files_folder).where(*where)
            ).all()
        failed_folders: list[str] = []
        for task_id, attempts, model_slug, socket_token, callback_url, *folders in lost:
            if attempts >= max_attempts:
                message = f"The worker running this task was lost {attempts} times; giving up."
                if self.fail(task_id, message):
                    failed.append(GivenUp(task_id, socket_token, message, bool(callback_url)))
                    failed_folders += [folder for folder in folders if folder]
                continue
            with self._db.write() as connection:
                changed = connection.execute(
                    update(tasks)
                    .where(tasks.c.id == task_id, *where)
                    .values(**_queued_again(now))
                ).rowcount
            if changed:
                requeued.append((task_id, model_slug))
        return Recovery(requeued, failed, failed_folders)
