"""Worker threads: they poll the store, and a queued task wakes them at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fluxhost.metrics import WorkerMetrics
from fluxhost.runtime.lanes import Lane
from fluxhost.runtime.worker import Worker

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0  # also picks up tasks queued by other processes or requeued by recovery
HALT_SECONDS = 10.0  # a halted generation stops at its next step: the longest step we wait for


class ThreadDispatcher:
    """Worker threads in this process: the API's (``FLUXHOST_WORKER_PROCESS=false``) or the
    child worker process's."""

    def __init__(
        self,
        make_workers: Callable[[], list[Worker]],
        concurrency: int,
        worker_metrics: WorkerMetrics | None = None,
        on_idle: Callable[[Lane], None] = lambda lane: None,
    ):
        """``make_workers``: one worker per device, each with its own engines; ``concurrency``:
        threads per worker; ``worker_metrics``: what the workers record into; ``on_idle(lane)``: a
        worker thread of ``lane`` found nothing to claim and is about to wait for :meth:`wake`."""
        self.make_workers = make_workers
        self.concurrency = concurrency
        self.worker_metrics = worker_metrics or WorkerMetrics()
        self.on_idle = on_idle
        # One per lane: a drawing queued does not wake the training lane, nor the reverse.
        self._wakes: dict[Lane, threading.Event] = {lane: threading.Event() for lane in (None, False, True)}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready = threading.Event()  # set once the workers (and their engines) are loaded
        self.workers: list[Worker] = []

    @property
    def worker(self) -> Worker | None:
        """The first device's worker (the only one on a single-device machine)."""
        return self.workers[0] if self.workers else None

    def load_error(self, slug: str) -> str | None:
        """Why ``slug`` cannot run here: its model failed to load on every device. None while
        loading, when it loaded somewhere, or when there are no workers."""
        served = [worker.models[slug] for worker in self.workers if slug in worker.models]
        if served and all(model.engine is None for model in served):
            return served[0].load_error
        return None

    def not_ready(self) -> str | None:
        if not self.concurrency:
            return None
        if not self.ready.is_set():
            return "the worker is loading its models (or could not start: see the log)"
        if all(model.engine is None for worker in self.workers for model in worker.models.values()):
            return "no model could be loaded (see the log)"
        return None

    def start(self) -> None:
        if self.concurrency:
            thread = threading.Thread(target=self._start_workers, name="fluxhost-loader", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _start_workers(self) -> None:
        try:
            workers = self.make_workers()
        except Exception:
            log.exception("the workers could not start: tasks stay queued")
            return
        self.workers = workers
        self.ready.set()
        for device, worker in enumerate(workers):
            # Trainings take a thread of their own: an hour of training never holds up a drawing.
            for training in worker.lanes:
                role = "trainer" if training else "worker"
                for index in range(self.concurrency if training is not True else 1):
                    name = f"fluxhost-{role}-{index}" if len(workers) == 1 else f"fluxhost-{role}-{device}.{index}"
                    thread = threading.Thread(target=self._loop, args=(worker, training), name=name, daemon=True)
                    thread.start()
                    self._threads.append(thread)

    def notify(self, task_id: int, model_slug: str) -> None:
        """Wake an idle worker thread of the lane that runs ``model_slug``: whichever is free
        claims the oldest queued task of its lane. Before the workers are loaded there is none to
        wake: they claim what is queued as soon as they start."""
        for lane in {worker.lane(model_slug) for worker in self.workers if model_slug in worker.models}:
            self.wake(lane)

    def wake(self, lane: Lane) -> None:
        """Wake an idle worker thread of ``lane``."""
        self._wakes[lane].set()

    def metrics(self) -> bytes:
        return self.worker_metrics.exposition()

    def stop(self, grace_seconds: float = 0.0) -> None:
        self._stopping.set()
        for wake in self._wakes.values():
            wake.set()
        deadline = time.monotonic() + grace_seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            log.warning("stopping the tasks still running after %.0f s; they are queued again", grace_seconds)
            for worker in self.workers:
                worker.halt()
            deadline = time.monotonic() + HALT_SECONDS
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self, worker: Worker, training: Lane) -> None:
        """Claim and run tasks of lane ``training`` until stopped."""
        wake = self._wakes[training]
        while not self._stopping.is_set():
            try:
                batch = worker.claim(training=training)
            except Exception:
                log.exception("claiming a task failed; retrying")
                batch = []
            if batch:
                worker.run(batch)
                continue
            self.on_idle(training)
            wake.wait(IDLE_POLL_SECONDS)
            wake.clear()
