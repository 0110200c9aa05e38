"""Getting queued tasks to workers. The database is the queue: a dispatcher only wakes workers,
which claim tasks by an atomic state change, so a lost or repeated wake-up never loses or
doubles a task."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from fluxhost.worker import Worker

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0  # also picks up tasks queued by other processes or requeued by recovery


class Dispatcher(Protocol):
    def start(self) -> None: ...

    def notify(self) -> None:
        """A task was queued."""

    def stop(self) -> None: ...


class LocalDispatcher:
    """Worker threads next to the API (the embedded default)."""

    def __init__(
        self,
        make_worker: Callable[[], Worker],
        concurrency: int,
    ):
        self.make_worker = make_worker
        self.concurrency = concurrency
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready = threading.Event()  # set once the worker (and its engines) is loaded
        self.worker: Worker | None = None

    def start(self) -> None:
        if self.concurrency:
            thread = threading.Thread(target=self._start_workers, name="fluxhost-loader", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _start_workers(self) -> None:
        try:
            worker = self.make_worker()
        except Exception:
            log.exception("the worker could not start: tasks stay queued")
            return
        self.worker = worker
        self.ready.set()
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._loop, args=(worker,), name=f"fluxhost-worker-{index}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self, worker: Worker) -> None:
        while not self._stopping.is_set():
            try:
                task = worker.claim()
            except Exception:
                log.exception("claiming a task failed; retrying")
                task = None
            if task is not None:
                worker.run(task)
                continue
            self._wake.wait(IDLE_POLL_SECONDS)
            self._wake.clear()
