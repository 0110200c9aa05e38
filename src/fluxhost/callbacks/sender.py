"""When callbacks are sent: a thread that claims the deliveries the database says are due and
posts them from a small pool, retrying with exponential backoff and jitter until delivered or
given up. A task's end wakes it at once; it also looks every few seconds, which finds the
deliveries owed by tasks that ended in other processes."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import Counter

from fluxhost.callbacks.poster import WebhookPoster
from fluxhost.events import EventBus, TaskEvent
from fluxhost.statuses import TERMINAL
from fluxhost.store.deliveries import Attempt, Deliveries, DueDelivery
from fluxhost.store.records import TaskView
from fluxhost.store.tasks import TaskStore

log = logging.getLogger(__name__)

SENDERS = 4
PASS_INTERVAL = 0.05  # passes over due deliveries are at least this far apart: task ends coalesce
IDLE_SECONDS = 5.0
CALLBACK_OUTCOMES = {"delivered": "delivered", "pending": "retrying", "failed": "failed"}


class CallbackSender:
    def __init__(
        self,
        deliveries: Deliveries,
        tasks: TaskStore,
        events: EventBus,
        render: Callable[[TaskView], dict[str, Any]],
        poster: WebhookPoster,
        max_attempts: int,
        backoff_seconds: float,
        attempts_counter: Counter | None = None,
    ):
        """``render`` makes a task into the callback's body (the hosted protocol's Task/Detail answer);
        ``attempts_counter`` (labelled by outcome) counts the POSTs made."""
        self.deliveries = deliveries
        self.tasks = tasks
        self.render = render
        self.poster = poster
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.attempts_counter = attempts_counter
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="fluxhost-callback")
        events.subscribe(self._notice_end)

    def _notice_end(self, event: TaskEvent) -> None:
        if event.type in TERMINAL:
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fluxhost-callbacks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): doubling, +/-20% jitter."""
        return self.backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                for delivery in self.deliveries.claim_due(time.time()):
                    self._pool.submit(self._deliver, delivery)
                wait = self.deliveries.seconds_to_next(IDLE_SECONDS)
            except Exception:
                log.exception("callback pass failed")
                wait = 1.0
            self._stopping.wait(min(wait, PASS_INTERVAL))
            self._wake.wait(max(0.0, wait - PASS_INTERVAL))
            self._wake.clear()

    def _deliver(self, delivery: DueDelivery) -> None:
        try:
            self._attempt(delivery)
        except Exception:
            log.exception("callback delivery %s failed unexpectedly", delivery.id)

    def _attempt(self, delivery: DueDelivery) -> None:
        record = self.tasks.get(delivery.task_id)
        number = delivery.attempts + 1
        body = json.dumps(self.render(record)).encode()
        started = time.time()
        outcome = self.poster.post(delivery.url, f"msg_{delivery.id}", delivery.webhook_secret, body)
        finished = time.time()
        if outcome.delivered:
            status, next_at = "delivered", finished
        elif outcome.retry and number < self.max_attempts:
            status, next_at = "pending", finished + self.delay_before(number)
        else:
            status, next_at = "failed", finished
        self.deliveries.record(delivery, Attempt(started, finished - started, outcome.status_code, outcome.error),
                               status, next_at)
        log.info("callback for task %s, attempt %s: %s %s", delivery.task_id, number,
                 outcome.status_code or "-", status)
        if self.attempts_counter is not None:
            self.attempts_counter.labels(CALLBACK_OUTCOMES[status]).inc()
        if status == "pending":
            self._wake.set()
