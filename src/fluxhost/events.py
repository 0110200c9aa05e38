"""Task events (the socket's frames): the worker publishes, whoever listens subscribes.

The embedded bus delivers in-process; the worker never knows who listens. Handlers run on the
publishing thread and must return quickly (hand the event to a queue or an event loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskEvent:
    task_id: int
    token: str
    type: str  # a Status value
    message: Any = None  # None for lifecycle events; progress dict or log line for task_output
    preview: str | None = None  # a progress event's step preview, a JPEG data URL
    time: float = field(default_factory=time.time)


Handler = Callable[[TaskEvent], None]


class EventBus(Protocol):
    def publish(self, event: TaskEvent) -> None: ...

    def subscribe(self, handler: Handler) -> Callable[[], None]: ...


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
        """Start calling ``handler`` for every event; returns the function that stops it."""
        with self._lock:
            self._handlers = [*self._handlers, handler]

        def unsubscribe() -> None:
            with self._lock:
                self._handlers = [h for h in self._handlers if h is not handler]

        return unsubscribe
