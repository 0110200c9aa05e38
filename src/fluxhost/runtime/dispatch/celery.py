"""Dispatch through Celery: one queue per model, a message per queued task carrying only its id.

API processes send; `fluxhost worker` processes consume, one task at a time (the solo pool: the
models stay loaded in the worker's own process, on its one device). Messages are acknowledged
after the task ran (``acks_late``) and a worker reserves one at a time (prefetch 1), so a worker
that dies leaves its message to come back. Whatever the broker delivers, the store decides: a
message whose task is no longer queued (run by another worker after recovery, cancelled, or a
second delivery) claims nothing and is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Reject

from fluxhost.events import open_event_bus
from fluxhost.runtime.host import Runtime, new_worker_id
from fluxhost.runtime.janitor import Janitor
from fluxhost.runtime.worker import Worker
from fluxhost.settings import ModelSettings, Settings
from fluxhost.storage import open_file_store
from fluxhost.store.database import DATABASE_FAULTS, Database
from fluxhost.store.work import WorkStore

log = logging.getLogger(__name__)

RUN_TASK = "fluxhost.run"
BEAT_SECONDS = 5.0
"""How often the dispatcher offers kept messages again, records the messages the broker took, and
looks for queued tasks whose message was never sent."""
SEND_TIMEOUTS = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
"""How long the API's sends wait on a broker that does not answer (kombu's Redis transport passes
no timeout: for ever). A send runs on a database thread, inside a Run's request."""
UNSENT_GRACE_SECONDS = 15.0
"""How long after a task was queued a process sends a message for it that no process recorded as
sent: longer than a send may take (:data:`SEND_TIMEOUTS`) and a beat, so that a message still on
its way is seldom sent twice. Twice is harmless (the second claims nothing), and a task stranded
for good is sent once by each process that sweeps before one of them records its message."""
RESTART_TOLERANCE_SECONDS = 2.0
"""How far apart two readings of the broker's start may be and still be one start: each is now less
its uptime, counted in whole seconds."""


def queue_name(model_slug: str) -> str:
    return f"fluxhost.{model_slug}"


def celery_app(broker_url: str, visibility_seconds: int, transport_options: dict[str, Any] | None = None) -> Celery:
    app = Celery("fluxhost", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": visibility_seconds, **(transport_options or {})},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_default_queue="fluxhost",
    )
    return app


class CeleryDispatcher:
    """The sending side: a message to the model's queue for every task queued. A message the
    broker would not take is kept and offered again every :data:`BEAT_SECONDS`, so a broker outage
    delays tasks but loses none; while messages wait so, a new one waits with them instead of
    making its Run wait on the broker too.

    What is kept in memory dies with the process, and a process can die between committing a Run
    and sending its message. So each message the broker took is recorded on the task (in a batch,
    at the next beat), and every beat each process sends a message for queued tasks that no
    process recorded one for within :data:`UNSENT_GRACE_SECONDS`.

    A broker that restarts may lose the messages it held: Redis keeps nothing without persistence,
    and nothing written since its last snapshot with it. So every beat asks the broker when it
    started, and at a start not seen before (or this process's first beat) the record of the
    messages sent before it is taken back from the tasks still queued, for the sweep to send them
    again (twice, where the broker kept them: harmless). Times are this host's clock; hosts whose
    clocks disagree by more than :data:`UNSENT_GRACE_SECONDS` may send some messages twice."""

    def __init__(self, broker_url: str, visibility_seconds: int, work: WorkStore,
                 transport_options: dict[str, Any] | None = None):
        self.app = celery_app(broker_url, visibility_seconds, {**SEND_TIMEOUTS, **(transport_options or {})})
        # asked at every beat when it started: Redis at a redis:// or rediss:// URL; None for a broker this cannot ask
        self._broker = (redis.Redis.from_url(broker_url, **SEND_TIMEOUTS)
                        if broker_url.startswith(("redis://", "rediss://")) else None)
        self.work = work
        self._unsent: dict[int, str] = {}
        self._sent: list[tuple[int, float]] = []  # (task id, when) taken by the broker, not recorded yet
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker_started: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat_loop, name="fluxhost-dispatch", daemon=True)
        self._thread.start()

    def notify(self, task_id: int, model_slug: str) -> None:
        with self._lock:
            if self._unsent:  # the broker refused the last message sent: this one waits with it
                self._unsent[task_id] = model_slug
                return
        self._send(task_id, model_slug)

    def _send(self, task_id: int, model_slug: str) -> bool:
        """Hand the message to the broker, or keep it for the next resend; whether it was taken."""
        try:
            self.app.send_task(RUN_TASK, args=[task_id], queue=queue_name(model_slug))
        except Exception as error:
            log.error("task %s stays queued until the broker takes its message: %s", task_id, error)
            with self._lock:
                self._unsent[task_id] = model_slug
            return False
        with self._lock:
            self._sent.append((task_id, time.time()))
        return True

    def load_error(self, slug: str) -> str | None:
        """Models load in the worker processes: the API takes every Run of a model it serves."""
        return None

    def not_ready(self) -> str | None:
        return None  # the workers are other processes, with their own health

    def metrics(self) -> bytes:
        return b""  # the workers are `fluxhost worker` processes: each serves its own (--metrics-port)

    def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop re-sending, and record what the broker took; tasks run in the worker processes,
        which Celery's own warm shutdown lets finish. Messages still kept are left to the other
        processes' sweeps (or this one's next start)."""
        self._stopping.set()
        if self._thread:
            self._thread.join(5)
        self._record_sent()
        self.app.close()
        if self._broker is not None:
            self._broker.close()

    def _beat_loop(self) -> None:
        while not self._stopping.wait(BEAT_SECONDS):
            self.beat()

    def beat(self) -> None:
        """One round: kept messages offered again, those taken recorded, the record of those a
        restarted broker may have lost taken back, and queued tasks without one sent."""
        self._resend()
        self._record_sent()
        self._forget_lost()
        self._sweep()

    def broker_started_at(self) -> float | None:
        """When the broker last started, by this host's clock; None for a broker this cannot ask
        (not Redis at a ``redis://`` or ``rediss://`` URL)."""
        if self._broker is None:
            return None
        return time.time() - self._broker.info("server")["uptime_in_seconds"]

    def _forget_lost(self) -> None:
        """At a broker start not seen before, take back the record of the messages sent to the
        broker before it (see the class)."""
        try:
            started = self.broker_started_at()
            if started is None or (self._broker_started is not None
                                   and abs(started - self._broker_started) <= RESTART_TOLERANCE_SECONDS):
                return
            forgotten = self.work.forget_sent(started)
        except Exception as error:
            log.warning("the broker's start not checked (%s): checking at the next beat", error)
            return
        self._broker_started = started
        if forgotten:
            log.warning("the broker started after the messages of %d queued task(s) were sent, and may have "
                        "lost them: sending them again", forgotten)

    def _record_sent(self) -> None:
        """Record on their tasks the messages the broker took since the last beat."""
        with self._lock:
            sent, self._sent = self._sent, []
        if not sent:
            return
        try:
            self.work.record_sent(sent)
        except Exception as error:
            log.warning("sent messages not recorded yet (%s): trying again at the next beat", error)
            with self._lock:
                self._sent[:0] = sent

    def _sweep(self) -> None:
        """Send a message for each queued task old enough that no process recorded one for: its API
        process died before the broker took it. Not while the broker refuses this process's
        messages: they go first, at the next beats."""
        with self._lock:
            if self._unsent:
                return
            unrecorded = {task_id for task_id, _sent_at in self._sent}
        try:
            lost = self.work.unsent(time.time() - UNSENT_GRACE_SECONDS)
        except Exception as error:
            log.warning("queued tasks without a message not looked for (%s)", error)
            return
        for task_id, model_slug in lost:
            if task_id in unrecorded:
                continue
            log.warning("task %s is queued but no process recorded its message as sent: sending it", task_id)
            if not self._send(task_id, model_slug):
                return

    def _resend(self) -> None:
        """Offer the kept messages again, oldest first (those kept meanwhile too), until none is
        left or the broker refuses one: the rest wait for the next round."""
        while True:
            with self._lock:
                if not self._unsent:
                    return
                task_id, model_slug = next(iter(self._unsent.items()))
            if not self._send(task_id, model_slug):
                return
            with self._lock:
                del self._unsent[task_id]


def run_task(dispatcher: CeleryDispatcher, worker: Worker, task_id: int) -> None:
    """What a message makes ``worker`` do: claim task ``task_id`` (with the tasks that join its
    batch) and run it; what the database failed under is handed back through ``dispatcher``. A
    claim the database failed puts the message back on its queue: acknowledged, it would be gone
    while its task stays queued, recorded as sent, and no sweep would send it again."""
    try:
        batch = worker.claim(task_id)
    except DATABASE_FAULTS as error:
        log.warning("task %s could not be claimed (%s): its message goes back to the queue", task_id, error)
        raise Reject(str(error), requeue=True) from error
    if not batch:
        log.info("task %s is no longer queued: message dropped", task_id)
        return
    for handed_back, model_slug in worker.run(batch):  # the database failed under the run
        dispatcher.notify(handed_back, model_slug)


def consume(dispatcher: CeleryDispatcher, worker: Worker, loglevel: str) -> None:
    """Run ``worker`` on its models' queues until the process is told to stop (SIGTERM or Ctrl-C
    finish the task in hand first), each message through :func:`run_task`."""
    app = dispatcher.app

    @app.task(name=RUN_TASK)
    def run(task_id: int) -> None:
        run_task(dispatcher, worker, task_id)

    queues = ",".join(queue_name(slug) for slug in worker.models)
    app.worker_main(["worker", "--pool=solo", "--concurrency=1", f"--queues={queues}", f"--loglevel={loglevel}",
                     f"--hostname=fluxhost-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
                     "--without-heartbeat"])


class WorkerProcess:
    """A ``fluxhost worker`` process: a runtime whose worker takes its tasks from the broker, and
    a janitor taking back the tasks of workers that died."""

    def __init__(self, settings: Settings, models: dict[str, ModelSettings]):
        """``models``: the served models, by slug. Connects to the database (migrating it) and to
        Redis, raising their errors when they cannot be reached."""
        if not settings.broker_url:
            raise RuntimeError("a worker process takes its tasks from a broker: set FLUXHOST_BROKER_URL")
        self.settings = settings
        self.db = Database(settings.resolved_database_url, settings.database_timeout_seconds)
        self.db.migrate()
        self.events = open_event_bus(settings.resolved_events_url)
        self.runtime = Runtime(settings, new_worker_id(), WorkStore(self.db), open_file_store(settings),
                               self.events, models)
        self.dispatcher = CeleryDispatcher(settings.broker_url, settings.broker_visibility_seconds,
                                           self.runtime.work, settings.broker_transport_options)
        self.janitor = Janitor(self.runtime.work, self.runtime.files, self.events, self.runtime.worker_id,
                               max_attempts=settings.max_attempts, lease_seconds=settings.lease_seconds,
                               requeued=self.dispatcher.notify)

    def run(self, slugs: list[str] | None = None, device: str | None = None) -> None:
        """Until told to stop: load the models (``slugs``, default all) once on ``device``
        (default the first configured), then run the tasks their queues bring. ValueError naming
        a slug this server does not serve."""
        unknown = sorted(set(slugs or ()) - set(self.runtime.models))
        if unknown:
            raise ValueError(f"not a model of this server: {', '.join(unknown)} "
                             f"(served: {', '.join(self.runtime.models)})")
        worker = self.runtime.make_workers([device or self.settings.device_list[0]], slugs)[0]
        self.janitor.recover()
        self.dispatcher.start()
        self.janitor.start()
        try:
            consume(self.dispatcher, worker, self.settings.log_level)
        finally:
            self.janitor.stop()
            self.dispatcher.stop()
            self.events.close()
            self.db.dispose()
