"""Taking back the tasks of workers that are gone, at start and then periodically, with whatever
other chores the process has (the API purges spent nonces and expires uploads on the same beat)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from fluxhost.events import EventBus, TaskEvent
from fluxhost.runtime.host import worker_may_be_alive
from fluxhost.runtime.outputs import storage_problem
from fluxhost.statuses import Status
from fluxhost.storage import FileStore
from fluxhost.store.work import WorkStore

log = logging.getLogger("fluxhost")

JANITOR_SECONDS = 30.0


class Janitor:
    def __init__(self, work: WorkStore, files: FileStore, events: EventBus, worker_id: str, *, max_attempts: int,
                 lease_seconds: float, requeued: Callable[[int, str], None],
                 chores: Sequence[Callable[[], object]] = ()):
        """``worker_id``: this process's workers' (its tasks are running here, whatever their
        lease says: one step can outlast it); ``requeued(task_id, model_slug)``: announce a task
        queued again; ``chores``: run on every pass after recovery. A task failed for good is told
        on ``events`` as a worker tells a failure: its followers wait for its end."""
        self.work = work
        self.files = files
        self.events = events
        self.worker_id = worker_id
        self.max_attempts = max_attempts
        self.requeued = requeued
        self.chores = chores
        self.interval = min(JANITOR_SECONDS, lease_seconds / 2)  # twice a lease
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def recover(self, lost: str | None = None) -> None:
        """Queue again (or fail for good) the tasks of workers that are gone: a process of this
        host that no longer runs, any worker whose lease ran out, and ``lost`` (our child worker
        process, which died)."""
        dead = {worker for worker in self.work.claiming_workers() if not worker_may_be_alive(worker)}
        if lost:
            dead.add(lost)
        alive = None if lost == self.worker_id else self.worker_id
        recovery = self.work.recover(self.max_attempts, dead_workers=dead, alive_worker=alive)
        if recovery.requeued or recovery.failed:
            log.warning("recovered unfinished tasks: requeued %s, failed %s",
                        [task_id for task_id, _slug in recovery.requeued], [ended.task_id for ended in recovery.failed])
        for task_id, model_slug in recovery.requeued:
            self.requeued(task_id, model_slug)
        for ended in recovery.failed:
            self.events.publish(TaskEvent(ended.task_id, ended.socket_token, Status.ERROR_FULL, text=ended.reason))
            self.events.publish(TaskEvent(ended.task_id, ended.socket_token, Status.POSTPROCESS_END,
                                          owes_callback=ended.owes_callback))
        for folder in recovery.failed_folders:
            try:
                self.files.clear(folder)
            except Exception as error:
                log.warning("files of a task given up could not be removed: %s", storage_problem(error))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fluxhost-janitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.recover()
                for chore in self.chores:
                    chore()
            except Exception:
                log.exception("janitor pass failed")
