"""The embedded worker in a child process (the default; ``FLUXHOST_WORKER_PROCESS=false`` keeps
it in the API's process).

The API and the worker then no longer take turns on one interpreter lock: a client polling hard
does not slow the generation, nor the generation the API. The child builds only a
:class:`~fluxhost.runtime.host.Runtime` with worker threads, on the same database and files, and
an in-process event bus that only its workers publish to. A pipe carries typed messages: wake-ups,
kills and the order to quit down; task events, the models' load results and the workers'
metrics up. Each event crosses the pipe once, and the parent publishes it once on its own bus (to
Redis, when configured): nothing heard on a bus is ever sent back. The child uses the parent's
worker id, so the parent's recovery treats the child's tasks as its own; when the child dies,
the parent takes those tasks back and starts a new one.

A busy child is not woken: its workers claim until the queue is empty, then say so
(:class:`Idle`), and only then does a queued task owe them a :class:`Wake`; each lane
(:mod:`fluxhost.runtime.lanes`) on its own, so that a drawing never wakes the training lane. A
worker in the child queues its events, and a thread of the child's sends what has queued as one
:class:`Events`. Under load a Run then sends nothing down the pipe, and one message up carries
many events, where a message each cost the sending thread a system call and a turn at the
interpreter lock, and the receiving thread one more of each.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from fluxhost.events import EventBus, LocalEventBus, TaskEvent
from fluxhost.metrics import PUSH_SECONDS
from fluxhost.runtime.lanes import Lane, lane_of
from fluxhost.settings import ModelSettings, Settings
from fluxhost.statuses import Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wake:
    """Down: a task of ``lane`` was queued (or queued again)."""

    lane: Lane


@dataclass(frozen=True)
class StopTask:
    """Down: task ``task_id`` was killed; if it runs in the child, it stops at its next step."""

    task_id: int


@dataclass(frozen=True)
class Quit:
    """Down: stop, giving the running tasks ``grace_seconds``, and queue again what is left."""

    grace_seconds: float


@dataclass(frozen=True)
class Events:
    """Up: what the workers did to tasks, in the order they did it."""

    events: tuple[TaskEvent, ...]


@dataclass(frozen=True)
class Idle:
    """Up: a worker of ``lane`` found nothing to claim, and waits for a :class:`Wake` (or its next
    poll)."""

    lane: Lane


@dataclass(frozen=True)
class Loaded:
    """Up: the child's models are loaded, but for these (slug -> why not)."""

    errors: dict[str, str]


@dataclass(frozen=True)
class Metrics:
    """Up: the child's workers' Prometheus exposition."""

    exposition: bytes


ToChild = Wake | StopTask | Quit
ToParent = Events | Idle | Loaded | Metrics

# A child that keeps dying young is restarted ever more slowly: 1, 2, 4... seconds, at most 60.
RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 60.0
CHILD_EXIT_SECONDS = 20.0  # after its grace: halting generations, releasing tasks, closing
# The child's sender, woken by a task's first event, waits this long for the rest of the burst (a
# task's claim is four events, its end four): a message for the burst, and the worker thread not
# made to hand the interpreter lock to the sender at each event. Publishing a burst takes
# microseconds (5 us for a task's end, timed alone); the wait is on the way to every client told
# of the task's end.
EVENTS_LINGER_SECONDS = 0.0001


class ChildProcessDispatcher:
    """The parent's side: starts the child, relays to and from it, restarts it when it dies."""

    def __init__(self, settings: Settings, worker_id: str, models: dict[str, ModelSettings], events: EventBus,
                 on_lost: Callable[[], None]):
        """``models``: the served models, by slug; ``events``: where the child's events are
        published; ``on_lost()``: take back the tasks of a child that died (it shares ``worker_id``)."""
        self.settings = settings
        self.worker_id = worker_id
        self.models = models
        self.events = events
        self.on_lost = on_lost
        self.load_errors: dict[str, str] = {}
        self._loaded = threading.Event()  # the current child reported its models
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pipe: Connection | None = None
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()  # a child is started, or the dispatcher stops: one at a time
        self._kinds = {model.kind for model in models.values() if settings.works_on(model.kind)}
        self._waking = threading.Lock()  # around the two sets below
        self._idle: set[Lane] = set()  # lanes where a worker said it waits, and was not woken since
        self._owed: set[Lane] = set()  # lanes where a task was queued while their workers were busy
        self._monitor: threading.Thread | None = None
        self._started_at = 0.0
        self._restart_delay = RESTART_DELAY_SECONDS
        self._metrics = b""  # the child's last exposition
        self._unsubscribe = events.subscribe(self._forward_stop)

    def start(self) -> None:
        if not self.settings.worker_concurrency:
            return
        self._spawn()
        self._monitor = threading.Thread(target=self._relay, name="fluxhost-child-relay", daemon=True)
        self._monitor.start()

    def notify(self, task_id: int, model_slug: str) -> None:
        """Wake the child's lane for ``model_slug`` if it waits; if it is busy, it will find the
        task before it waits (or say it waits, and be woken then)."""
        served = self.models.get(model_slug)
        if served is None or served.kind not in self._kinds:
            return  # the child's workers do not run it: workers elsewhere do
        lane = lane_of(served.kind, self._kinds)
        with self._waking:
            if lane not in self._idle:
                self._owed.add(lane)
                return
            self._idle.discard(lane)
        self._send(Wake(lane))

    def load_error(self, slug: str) -> str | None:
        return self.load_errors.get(slug) or None

    def not_ready(self) -> str | None:
        if not self.settings.worker_concurrency:
            return None
        if self._process is None or not self._process.is_alive():
            return "the worker process is not running (it is restarted after a failure: see the log)"
        if not self._loaded.is_set():
            return "the worker is loading its models"
        worked_on = [slug for slug, model in self.models.items() if model.kind in self._kinds]
        if all(slug in self.load_errors for slug in worked_on):  # the child loads only the kinds it works on
            return "no model could be loaded (see the log)"
        return None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def metrics(self) -> bytes:
        return self._metrics

    def stop(self, grace_seconds: float = 0.0) -> None:
        """Tell the child to stop (it gives its running tasks ``grace_seconds`` and releases what
        is left); kill it if it has not exited some time after that."""
        with self._lifecycle:  # a child being started meanwhile is started first, and told to quit too
            self._stopping.set()
        self._unsubscribe()
        self._send(Quit(grace_seconds))
        if self._process is not None:
            self._process.join(grace_seconds + CHILD_EXIT_SECONDS)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        if self._monitor is not None:
            self._monitor.join(5)

    def _spawn(self) -> None:
        parent_end, child_end = self._context.Pipe()
        self._process = self._context.Process(
            target=run_child, args=(self.settings, self.worker_id, self.models, child_end), name="fluxhost-worker",
            daemon=True)
        self._loaded.clear()
        with self._waking:  # a new child claims what is queued before it ever waits
            self._idle.clear()
            self._owed.clear()
        self._process.start()
        self._started_at = time.monotonic()
        child_end.close()
        self._pipe = parent_end

    def _replace_child(self) -> bool:
        """Take back the lost child's tasks, then start a new child after the restart delay; each
        tried again, the delay doubling, while it fails (a database that does not answer, no
        process to be had): a relay that gave up would leave the server without a worker, and the
        lost tasks claimed by a worker id that lives on. False once the dispatcher stops."""
        recovered = False
        while True:
            try:
                if not recovered:
                    self.on_lost()
                    recovered = True
                if self._stopping.wait(self._restart_delay):
                    return False
                with self._lifecycle:
                    if self._stopping.is_set():
                        return False
                    self._spawn()
                return True
            except Exception:
                log.exception("replacing the worker process failed; trying again in %g s", self._restart_delay)
                if self._stopping.wait(self._restart_delay):
                    return False
                self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_DELAY_SECONDS)

    def _send(self, message: ToChild) -> None:
        with self._send_lock:
            if self._pipe is None:
                return
            try:
                self._pipe.send(message)
            except (OSError, ValueError):  # the child is gone: the relay restarts it and recovery re-runs
                pass

    def _heard_idle(self, lane: Lane) -> None:
        """A worker of the child's ``lane`` waits: wake it at once if a task of its lane was queued
        since it last looked (it may have looked just before that task's commit), else at the next."""
        with self._waking:
            owed = lane in self._owed
            self._owed.discard(lane)
            if owed:
                self._idle.discard(lane)
            else:
                self._idle.add(lane)
        if owed:
            self._send(Wake(lane))

    def _forward_stop(self, event: TaskEvent) -> None:
        """Kill and Cancel happen in the API: the child's running generation must hear of them."""
        if event.type == Status.CANCEL:
            self._send(StopTask(event.task_id))

    def _relay(self) -> None:
        """Hand the child's messages on until it exits (while it stops too: a child whose pipe
        filled up would block mid-task); when it dies unasked, recover and start a new one."""
        while True:
            try:
                message: ToParent = self._pipe.recv()
            except (EOFError, OSError):
                if self._stopping.is_set():
                    return
                log.error("the worker process exited (code %s): its tasks are taken back, a new one starts",
                          self._process.exitcode if self._process else None)
                with self._send_lock:
                    self._pipe = None
                self._process.join(5)
                lived = time.monotonic() - self._started_at
                self._restart_delay = (RESTART_DELAY_SECONDS if lived > MAX_RESTART_DELAY_SECONDS
                                       else min(self._restart_delay * 2, MAX_RESTART_DELAY_SECONDS))
                if not self._replace_child():
                    return
                continue
            match message:
                case Events(events):
                    for event in events:
                        self.events.publish(event)
                case Idle(lane):
                    self._heard_idle(lane)
                case Loaded(errors):
                    self.load_errors = errors
                    self._loaded.set()
                case Metrics(exposition):
                    self._metrics = exposition


def run_child(settings: Settings, worker_id: str, models: dict[str, ModelSettings], pipe: Connection) -> None:
    """The child process: worker threads on a runtime of their own, talking through ``pipe``."""
    from fluxhost import tracing
    from fluxhost.logs import configure
    from fluxhost.runtime.dispatch.threads import ThreadDispatcher
    from fluxhost.runtime.host import Runtime
    from fluxhost.storage import open_file_store
    from fluxhost.store.database import Database
    from fluxhost.store.work import WorkStore

    # Ctrl-C reaches the whole process group, and a service manager may send SIGTERM to every
    # process of the service: the parent decides when we stop, and with what grace.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure(settings.log_level, settings.log_format)
    tracing.configure()
    db = Database(settings.resolved_database_url, settings.database_timeout_seconds)
    events = LocalEventBus()  # only this process's workers publish here; the parent relays to the rest
    runtime = Runtime(settings, worker_id, WorkStore(db), open_file_store(settings), events, models)
    # What the workers tell the parent, in order; None: the last, sent before exiting.
    outbox: queue.SimpleQueue[TaskEvent | Idle | None] = queue.SimpleQueue()
    dispatcher = ThreadDispatcher(runtime.make_workers, settings.worker_concurrency, runtime.metrics,
                                  on_idle=lambda lane: outbox.put(Idle(lane)))
    send_lock = threading.Lock()
    stopping = threading.Event()

    def send(message: ToParent) -> None:
        with send_lock:
            pipe.send(message)

    def send_outbox() -> None:
        """What the workers queued: their events in one message per wake-up of this thread, then
        an :class:`Idle` for each lane where one of them waits."""
        while True:
            batch = [outbox.get()]
            time.sleep(EVENTS_LINGER_SECONDS)
            while not outbox.empty():
                batch.append(outbox.get())
            events: list[TaskEvent] = []
            idle: dict[Lane, Idle] = {}
            closing = False
            for item in batch:
                if isinstance(item, TaskEvent):
                    events.append(item)
                elif item is None:
                    closing = True
                else:
                    idle[item.lane] = item
            try:
                if events:
                    send(Events(tuple(events)))
                for message in idle.values():
                    send(message)
            except (OSError, ValueError):  # the parent is gone: nobody is left to tell
                return
            if closing:
                return

    def report_loads() -> None:
        dispatcher.ready.wait()
        send(Loaded({slug: error for slug in models if (error := dispatcher.load_error(slug))}))

    def push_metrics() -> None:
        last = b""
        while not stopping.wait(PUSH_SECONDS):
            exposition = dispatcher.metrics()
            if exposition != last:
                send(Metrics(exposition))
                last = exposition

    events.subscribe(outbox.put)
    sender = threading.Thread(target=send_outbox, name="fluxhost-child-outbox", daemon=True)
    sender.start()
    dispatcher.start()
    threading.Thread(target=report_loads, name="fluxhost-child-loads", daemon=True).start()
    threading.Thread(target=push_metrics, name="fluxhost-child-metrics", daemon=True).start()
    grace_seconds = 0.0
    try:
        while True:
            try:
                message: ToChild = pipe.recv()
            except (EOFError, OSError):  # the parent is gone
                break
            match message:
                case Quit(grace):
                    grace_seconds = grace
                    break
                case Wake(lane):
                    dispatcher.wake(lane)
                case StopTask(task_id):
                    for worker in dispatcher.workers:
                        worker.stop_task(task_id)
    finally:
        stopping.set()
        dispatcher.stop(grace_seconds)
        runtime.release_unfinished()
        outbox.put(None)
        sender.join(CHILD_EXIT_SECONDS)
        db.dispose()
