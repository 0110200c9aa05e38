"""When callbacks are sent: a thread that claims the deliveries the database says are due and
posts them from a small pool, retrying with exponential backoff and jitter until delivered or
given up. A task's end wakes it at once; it also looks every few seconds, which finds the
deliveries owed by tasks that ended in other processes.

A pass starts as soon as a task ends, but at most one every :data:`PASS_INTERVAL`: ends close
together share a pass, and one alone is not kept waiting. A post's end brings a pass only when its
delivery is to be tried again (the pass times the retry) or a due delivery was held back for want of
a free sender.

A delivery is claimed only when a sender is free to post it at once, and for longer than a post
may last (the poster's deadline plus :data:`CLAIM_MARGIN_SECONDS`), so no other sender takes it
while it is in flight. At most ``per_origin`` posts go to one origin (scheme, host, port) at a
time: receivers that answer slowly hold at most that many senders each, and the rest go on.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import Counter

from fluxhost.callbacks.poster import Outcome, WebhookPoster
from fluxhost.events import EventBus, TaskEvent
from fluxhost.statuses import TERMINAL
from fluxhost.store.database import DATABASE_FAULTS
from fluxhost.store.deliveries import Attempt, Deliveries, DueDelivery
from fluxhost.store.records import TaskView
from fluxhost.store.tasks import TaskStore

log = logging.getLogger(__name__)

SENDERS = 8
CLAIM_MARGIN_SECONDS = 30.0  # beyond the post's deadline: rendering the body, recording the attempt
RECORD_RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0)
"""Waits before each new try at recording an attempt the database refused, well within the claim's
margin: an outcome not recorded is posted again once the claim runs out (a second POST after a 2xx)."""
MAX_RETRY_DELAY_SECONDS = 86_400.0  # the doubling stops at a day: a delivery always ends in its attempts
PASS_INTERVAL = 0.002  # passes over due deliveries start at least this far apart
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
        per_origin: int,
        attempts_counter: Counter | None = None,
    ):
        """``render`` makes a task into the callback's body (the hosted protocol's Task/Detail answer);
        ``per_origin`` bounds the posts in flight to one origin; ``attempts_counter`` (labelled by
        outcome) counts the POSTs made."""
        self.deliveries = deliveries
        self.tasks = tasks
        self.render = render
        self.poster = poster
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.per_origin = per_origin
        self.attempts_counter = attempts_counter
        self._in_flight: Tally[str] = Tally()
        self._in_flight_lock = threading.Lock()
        self._held_back = False  # a due delivery found no free sender: the next post's end brings a pass
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="fluxhost-callback")
        events.subscribe(self._notice_end)

    def _notice_end(self, event: TaskEvent) -> None:
        """A pass as soon as a task ends owing a delivery (and not at every end: a pass is two
        queries, and most tasks have no callback URL)."""
        if event.type in TERMINAL and event.owes_callback:
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
        self.poster.close()

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): doubling up to a day, +/-20% jitter."""
        return min(self.backoff_seconds * 2.0 ** (attempt - 1), MAX_RETRY_DELAY_SECONDS) * random.uniform(0.8, 1.2)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before the pass: a task that ends during it brings the next
            started = time.monotonic()
            try:
                now = time.time()
                self._start_due(now)
                wait = self.deliveries.seconds_to_next(now, IDLE_SECONDS)
            except Exception:
                log.exception("callback pass failed")
                wait = 1.0
            self._wake.wait(wait)
            self._stopping.wait(max(0.0, started + PASS_INTERVAL - time.monotonic()))

    def _start_due(self, now: float) -> None:
        """Claim and start the due deliveries there are free senders for, origin by origin."""
        hold_until = now + self.poster.deadline_seconds + CLAIM_MARGIN_SECONDS
        for delivery_id, url in self.deliveries.due(now):
            origin = origin_of(url)
            with self._in_flight_lock:
                if self._in_flight.total() >= SENDERS:
                    self._held_back = True
                    return
                if self._in_flight[origin] >= self.per_origin:
                    self._held_back = True
                    continue
            delivery = self.deliveries.claim(delivery_id, now, hold_until)
            if delivery is None:
                continue
            with self._in_flight_lock:
                self._in_flight[origin] += 1
            self._pool.submit(self._deliver, delivery, origin)

    def _deliver(self, delivery: DueDelivery, origin: str) -> None:
        """Post one delivery; then a pass, unless it ended (delivered or failed) and nothing was
        held back for this sender."""
        status = None
        try:
            status = self._attempt(delivery)
        except Exception:
            log.exception("callback delivery %s failed unexpectedly", delivery.id)
        finally:
            with self._in_flight_lock:
                self._in_flight[origin] -= 1
                if not self._in_flight[origin]:
                    del self._in_flight[origin]  # an origin is remembered while a post to it is in flight
                held_back, self._held_back = self._held_back, False
            if status not in ("delivered", "failed") or held_back:
                self._wake.set()

    def _attempt(self, delivery: DueDelivery) -> str | None:
        """One POST, recorded; where the delivery stands after it (delivered, pending, failed), or
        None when its claim was taken over and nothing was recorded."""
        record = self.tasks.get(delivery.task_id)
        number = delivery.attempts + 1
        body = json.dumps(self.render(record)).encode()
        started = time.time()
        try:
            outcome = self.poster.post(delivery.url, f"msg_{delivery.id}", delivery.webhook_secret, body)
        except Exception as error:  # an attempt all the same, counted: a delivery is never retried for ever
            log.exception("callback for task %s, attempt %s failed unexpectedly", delivery.task_id, number)
            outcome = Outcome(None, f"the attempt failed: {type(error).__name__}", retry=True)
        finished = time.time()
        if outcome.delivered:
            status, next_at = "delivered", finished
        elif outcome.retry and number < self.max_attempts:
            status, next_at = "pending", finished + self.delay_before(number)
        else:
            status, next_at = "failed", finished
        attempt = Attempt(started, finished - started, outcome.status_code, outcome.error)
        if not self._record(delivery, attempt, status, next_at):
            log.warning("callback for task %s, attempt %s: its claim was taken over, the outcome (%s) is not "
                        "recorded", delivery.task_id, number, outcome.status_code or outcome.error)
            return None
        log.info("callback for task %s, attempt %s: %s %s", delivery.task_id, number,
                 outcome.status_code or "-", status)
        if self.attempts_counter is not None:
            self.attempts_counter.labels(CALLBACK_OUTCOMES[status]).inc()
        return status

    def _record(self, delivery: DueDelivery, attempt: Attempt, status: str, next_at: float) -> bool:
        """:meth:`Deliveries.record`, tried again while the database refuses it (locked, a dropped
        connection), within the claim's margin."""
        for wait in RECORD_RETRY_SECONDS:
            try:
                return self.deliveries.record(delivery, attempt, status, next_at)
            except DATABASE_FAULTS as error:
                log.warning("callback for task %s: its attempt could not be recorded yet (%s)", delivery.task_id,
                            type(error).__name__)
                self._stopping.wait(wait)
        return self.deliveries.record(delivery, attempt, status, next_at)  # the last try: a fault goes up


def origin_of(url: str) -> str:
    """Where a URL's requests go: scheme, host and port (the default port made explicit)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"
