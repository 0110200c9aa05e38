"""What a server refuses so that no one client can take it all: requests per key per minute, and
unfinished tasks per key, per project and per model queue (each 0 for none).

Request rates are counted in this process (a token bucket per key), or in Redis when the service
has one (a counter per key and minute), so that every API process of a fleet counts the same
requests. Task counts come from the database at each Run.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)
REDIS_TIMEOUT_SECONDS = 0.5  # a request waits no longer than this for its count


class RateLimited(Exception):
    def __init__(self, per_minute: int, retry_after: float):
        super().__init__(f"Too many requests: this key may make {per_minute} per minute. Retry in "
                         f"{math.ceil(retry_after)} s.")
        self.retry_after = max(1, math.ceil(retry_after))


class RequestRate(Protocol):
    def take(self, key_id: int) -> None:
        """Count one request of ``key_id``; :class:`RateLimited` when it is one too many."""


class NoRequestRate:
    def take(self, key_id: int) -> None:
        return None


class LocalRequestRate:
    """A token bucket per key: ``per_minute`` requests in a burst, refilled evenly over a minute."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute = per_minute
        self._refill_per_second = per_minute / 60
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self._lock = threading.Lock()

    def take(self, key_id: int) -> None:
        now = self._clock()
        with self._lock:
            tokens, since = self._buckets.get(key_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - since) * self._refill_per_second)
            if tokens < 1:
                self._buckets[key_id] = (tokens, now)
                raise RateLimited(self.per_minute, (1 - tokens) / self._refill_per_second)
            self._buckets[key_id] = (tokens - 1, now)


class RedisRequestRate:
    """A counter per key and clock minute in Redis, shared by the fleet's API processes (a burst
    straddling two minutes may pass up to twice the rate: the price of one round trip). While
    Redis cannot be reached, requests pass uncounted: a limit must not become an outage."""

    def __init__(self, url: str, per_minute: int, clock=time.time):
        import redis

        self.per_minute = per_minute
        self._redis = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                           socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self._unreachable = redis.RedisError
        self._clock = clock
        self._warned = False

    def take(self, key_id: int) -> None:
        now = self._clock()
        minute = int(now // 60)
        counter = f"fluxhost:rate:{key_id}:{minute}"
        try:
            with self._redis.pipeline(transaction=False) as pipeline:
                count, _ = pipeline.incr(counter).expire(counter, 120).execute()
        except self._unreachable as error:
            if not self._warned:
                log.warning("request rates go uncounted while Redis cannot be reached: %s", error)
                self._warned = True
            return
        self._warned = False
        if count > self.per_minute:
            raise RateLimited(self.per_minute, (minute + 1) * 60 - now)


def request_rate(per_minute: int, redis_url: str | None) -> RequestRate:
    if per_minute <= 0:
        return NoRequestRate()
    return RedisRequestRate(redis_url, per_minute) if redis_url else LocalRequestRate(per_minute)


@dataclass(frozen=True)
class TaskLimits:
    """Most unfinished (queued or running) tasks at once; 0: no limit."""

    per_key: int = 0
    per_project: int = 0
    queued_per_model: int = 0

    @property
    def any(self) -> bool:
        return bool(self.per_key or self.per_project or self.queued_per_model)


NO_TASK_LIMITS = TaskLimits()


@dataclass(frozen=True)
class UnfinishedCounts:
    """A Run's view of the work already waiting: its key's and project's unfinished tasks, and the
    queue of the model it asks for."""

    of_key: int
    of_project: int
    queued_for_model: int

    def refusal(self, limits: TaskLimits, model_slug: str) -> str | None:
        """Why one more task would be too many, or None."""
        if limits.per_key and self.of_key >= limits.per_key:
            return (f"Too many unfinished tasks for this API key: {self.of_key} queued or running, at most "
                    f"{limits.per_key}. Wait for some to end, or cancel some.")
        if limits.per_project and self.of_project >= limits.per_project:
            return (f"Too many unfinished tasks for this project: {self.of_project} queued or running, at most "
                    f"{limits.per_project}. Wait for some to end, or cancel some.")
        if limits.queued_per_model and self.queued_for_model >= limits.queued_per_model:
            return (f"The queue of {model_slug} is full ({self.queued_for_model} tasks waiting): it would not run "
                    "soon. Try again later.")
        return None
