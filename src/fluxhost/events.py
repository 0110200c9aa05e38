"""Task events: the worker and the task operations publish, the socket (and whoever else) listens.

An event is a typed record with a JSON codec, so it can cross a process boundary unchanged; what
a door makes of it (the hosted protocol's ``progressGenerate`` frames, say) is the door's business.
The embedded bus delivers in-process; handlers run on the publishing thread and must return
quickly (hand the event to a queue or an event loop).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import TypeAdapter

from fluxhost.statuses import Status

log = logging.getLogger(__name__)

PUBLISH_ATTEMPTS = 3
"""Tries at publishing a batch of events through Redis, half a second apart and then a second."""


@dataclass(frozen=True)
class Progress:
    """Where a generation stands after a denoising step (a training after an optimizer step)."""

    step: int  # steps done, 1-based
    total: int
    rate: float  # steps per second so far
    elapsed: float  # seconds since the generation started
    remaining: float  # seconds still to go, estimated from the rate
    loss: float | None = None  # a training step's loss

    @classmethod
    def measure(cls, step: int, total: int, elapsed: float, done_before: int = 0,
                loss: float | None = None) -> Progress:
        """``done_before``: steps a resumed training had done before this run (not in its rate)."""
        rate = (step - done_before) / max(elapsed, 1e-9)
        return cls(step, total, rate, elapsed, (total - step) / rate if rate else 0.0, loss)


@dataclass(frozen=True)
class TaskEvent:
    """Something that happened to a task: a change of status, a step's progress, its whole log."""

    task_id: int
    token: str
    type: Status
    progress: Progress | None = None  # with ``task_output``: the step just done
    preview: str | None = None  # with progress, when previews are on: the image so far, a JPEG data URL
    text: str | None = None  # with ``task_output_full`` / ``task_error_full``: the whole log or error
    time: float = field(default_factory=time.time)
    # With an end (``TERMINAL``): the task has a callback URL, so a delivery was owed as it ended.
    owes_callback: bool = False

    def encode(self) -> bytes:
        return _EVENT_JSON.dump_json(self)

    @staticmethod
    def decode(data: bytes | str) -> TaskEvent:
        return _EVENT_JSON.validate_json(data)


_EVENT_JSON = TypeAdapter(TaskEvent)

Handler = Callable[[TaskEvent], None]


class EventBus(Protocol):
    def publish(self, event: TaskEvent) -> None: ...

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        """Start calling ``handler`` for every event; returns the function that stops it."""

    def close(self) -> None:
        """Deliver what was published, then stop."""


class LocalEventBus:
    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._lock = threading.Lock()

    def publish(self, event: TaskEvent) -> None:
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:
                log.exception("event handler failed for task %s", event.task_id)

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        with self._lock:
            self._handlers = [*self._handlers, handler]

        def unsubscribe() -> None:
            with self._lock:
                self._handlers = [h for h in self._handlers if h is not handler]

        return unsubscribe

    def close(self) -> None:
        """Nothing to do: publishing delivered every event already."""


class RedisEventBus:
    """Events through Redis pub/sub, for several processes: every process publishes to one channel
    and hears every event (its own included) in the order Redis received them, on one listener
    thread that hands them to the local handlers. A late subscriber reads the current state from
    the store, as the socket does.

    Publishing only queues the event: a sender thread sends what has queued in one pipelined
    round trip, in order, so a worker never waits on Redis between two steps of a task. An event
    still queued when the process dies is lost to the listeners, never to the task: the store
    has its state."""

    def __init__(self, url: str, channel: str = "fluxhost:events"):
        import redis

        self.channel = channel
        self._redis = redis.Redis.from_url(url)
        self._local = LocalEventBus()
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        self._pubsub.get_message(timeout=5)  # the confirmation: from here on, nothing published is missed
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="fluxhost-events", daemon=True)
        self._listener.start()
        self._sender = threading.Thread(target=self._send, name="fluxhost-events-out", daemon=True)
        self._sender.start()

    def publish(self, event: TaskEvent) -> None:
        self._outbox.put(event.encode())

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        return self._local.subscribe(handler)

    def close(self) -> None:
        """Send what is queued, then stop listening."""
        self._outbox.put(None)
        self._sender.join(5)
        self._stopping.set()
        self._listener.join(5)
        self._pubsub.close()
        self._redis.close()

    def _send(self) -> None:
        import redis

        while True:
            batch = [self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get())
            closing = None in batch
            events = [data for data in batch if data is not None]
            for attempt in range(1, PUBLISH_ATTEMPTS + 1):
                pipeline = self._redis.pipeline(transaction=False)  # one a try: a pipeline that ran is emptied
                for data in events:
                    pipeline.publish(self.channel, data)
                try:
                    pipeline.execute()
                    break
                except redis.RedisError as error:
                    if attempt == PUBLISH_ATTEMPTS:
                        log.error("%s events were not published, after %s attempts: sockets following their tasks "
                                  "miss them (%s)", len(events), attempt, error)
                    else:
                        log.warning("publishing %s events failed (attempt %s): %s", len(events), attempt, error)
                        time.sleep(0.5 * attempt)
            if closing:
                return

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.5)
            except Exception:
                log.exception("the Redis event subscription failed; resubscribing")
                self._stopping.wait(1.0)
                continue
            if message and message["type"] == "message":
                try:
                    event = TaskEvent.decode(message["data"])
                except ValueError:
                    log.warning("ignored a malformed event on %s", self.channel)
                    continue
                self._local.publish(event)


def open_event_bus(redis_url: str | None) -> EventBus:
    """The bus through Redis at ``redis_url`` (several processes), or the in-process one."""
    return RedisEventBus(redis_url) if redis_url else LocalEventBus()
