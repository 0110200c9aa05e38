"""What a server refuses so that no one client can take it all: requests per key per minute, failed
authentications per client address and per key per minute, and unfinished tasks per key, per
project and per model queue (each 0 for none).

Request rates are counted in this process (a token bucket per key), or in Redis when the service
has one (a counter per key and minute), so that every API process of a fleet counts the same
requests; failed authentications likewise (a counter per address or key and minute). Task counts
come from the database at each Run.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)
REDIS_TIMEOUT_SECONDS = 0.5  # a request waits no longer than this for its count


class RateLimited(Exception):
    """A request refused for how much its sender asked; ``retry_after``: whole seconds to wait."""

    def __init__(self, reason: str, retry_after: float):
        super().__init__(f"{reason} Retry in {math.ceil(retry_after)} s.")
        self.retry_after = max(1, math.ceil(retry_after))


def too_many_requests(per_minute: int, retry_after: float) -> RateLimited:
    return RateLimited(f"Too many requests: this key may make {per_minute} per minute.", retry_after)


class TooManyAuthFailures(RateLimited):
    """A request from an address, or for a key, that failed authentication too often this minute:
    refused whatever its credentials, as rate-limited (doors answer 429 with Retry-After)."""


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
                raise too_many_requests(self.per_minute, (1 - tokens) / self._refill_per_second)
            self._buckets[key_id] = (tokens - 1, now)


class MinuteCounts(Protocol):
    """Counters per name and clock minute."""

    def add(self, name: str, minute: int) -> int:
        """Count one more for ``name`` in ``minute``; the count so far."""

    def read(self, names: Sequence[str], minute: int) -> list[int]:
        """The counts of ``names`` in ``minute``."""


class LocalMinuteCounts:
    """Counts in this process, of the current minute only: a new minute starts them afresh, so
    they hold no more names than one minute brought."""

    def __init__(self) -> None:
        self._minute = -1
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, name: str, minute: int) -> int:
        with self._lock:
            self._start(minute)
            self._counts[name] += 1
            return self._counts[name]

    def read(self, names: Sequence[str], minute: int) -> list[int]:
        with self._lock:
            self._start(minute)
            return [self._counts[name] for name in names]

    def _start(self, minute: int) -> None:
        if minute != self._minute:
            self._minute, self._counts = minute, Counter()


class RedisMinuteCounts:
    """Counts in Redis (``fluxhost:<name>:<minute>``, kept two minutes), shared by the fleet's API
    processes. While Redis cannot be reached, nothing is counted (every count reads 0): a limit
    must not become an outage. ``counted``: what goes uncounted then, for the warning."""

    def __init__(self, url: str, counted: str):
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                           socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self._unreachable = redis.RedisError
        self._counted = counted
        self._warned = False

    def add(self, name: str, minute: int) -> int:
        counter = f"fluxhost:{name}:{minute}"
        try:
            with self._redis.pipeline(transaction=False) as pipeline:
                count, _ = pipeline.incr(counter).expire(counter, 120).execute()
        except self._unreachable as error:
            self._warn(error)
            return 0
        self._warned = False
        return count

    def read(self, names: Sequence[str], minute: int) -> list[int]:
        try:
            values = self._redis.mget([f"fluxhost:{name}:{minute}" for name in names])
        except self._unreachable as error:
            self._warn(error)
            return [0] * len(names)
        self._warned = False
        return [int(value or 0) for value in values]

    def _warn(self, error: Exception) -> None:
        if not self._warned:
            log.warning("%s go uncounted while Redis cannot be reached: %s", self._counted, error)
            self._warned = True


class RedisRequestRate:
    """A counter per key and clock minute in Redis, shared by the fleet's API processes (a burst
    straddling two minutes may pass up to twice the rate: the price of one round trip). While
    Redis cannot be reached, requests pass uncounted: a limit must not become an outage."""

    def __init__(self, url: str, per_minute: int, clock=time.time):
        self.per_minute = per_minute
        self._counts = RedisMinuteCounts(url, "request rates")
        self._clock = clock

    def take(self, key_id: int) -> None:
        now = self._clock()
        minute = int(now // 60)
        if self._counts.add(f"rate:{key_id}", minute) > self.per_minute:
            raise too_many_requests(self.per_minute, (minute + 1) * 60 - now)


def request_rate(per_minute: int, redis_url: str | None) -> RequestRate:
    if per_minute <= 0:
        return NoRequestRate()
    return RedisRequestRate(redis_url, per_minute) if redis_url else LocalRequestRate(per_minute)


class AuthFailureLimit:
    """Failed authentications (an unknown key, a missing or wrong signature or secret, a refused
    nonce) counted per client address and per key in clock minutes. An address that failed
    ``per_address`` times this minute, or a key that failed ``per_key`` times (from any address),
    has every request refused (:class:`TooManyAuthFailures`) until the minute ends, good ones
    too; those refusals are not failures, and count for nothing.

    The policy, against two attacks. One address guessing gets ``per_address`` tries a minute and
    then nothing, not even a check of its signatures. The key is public (every signed request
    carries it), so anyone can fail in its name: the per-key budget is the larger one, and since a
    refused address adds nothing to it, locking a key out of every address takes at least
    ``per_key / per_address`` addresses each failing its whole budget, and lasts only while they
    keep at it (to the end of the minute in which they stop). Unknown keys count for their address
    only. 0 turns either count off. The address is the client's as the server sees it (behind a
    proxy, its ``X-Forwarded-For`` when uvicorn trusts the proxy: ``FORWARDED_ALLOW_IPS``), an
    IPv6 address counted with its whole /64 (see :func:`counted_address`).
    """

    def __init__(self, per_address: int, per_key: int, counts: MinuteCounts, clock=time.time):
        self.per_address = per_address
        self.per_key = per_key
        self._counts = counts
        self.clock = clock

    def check(self, address: str | None, key_id: int | None) -> None:
        """Refuse a request whose address or key is over its budget this minute."""
        budgets = self._budgets(address, key_id)
        if not budgets:
            return
        now = self.clock()
        counts = self._counts.read([name for name, _, _ in budgets], int(now // 60))
        for (_, budget, whom), count in zip(budgets, counts, strict=True):
            if count >= budget:
                raise TooManyAuthFailures(f"Too many failed authentications {whom}: at most {budget} a minute.",
                                          60 - now % 60)

    def record(self, address: str | None, key_id: int | None) -> None:
        """Count one failed authentication from ``address`` (for ``key_id``, when the key exists)."""
        minute = int(self.clock() // 60)
        for name, _, _ in self._budgets(address, key_id):
            self._counts.add(name, minute)

    def _budgets(self, address: str | None, key_id: int | None) -> list[tuple[str, int, str]]:
        """(counter name, budget, whose failures in words) of what counts for this request."""
        budgets = []
        if self.per_address and address:
            budgets.append((f"authfail:address:{counted_address(address)}", self.per_address, "from this address"))
        if self.per_key and key_id is not None:
            budgets.append((f"authfail:key:{key_id}", self.per_key, "for this API key"))
        return budgets


def counted_address(address: str) -> str:
    """Whose failures ``address``'s are: an IPv6 address's /64 network (one host or subscriber
    commonly holds a whole /64 and sends from any address in it: counted apart, each would have a
    budget of its own), an IPv4 address as itself, and one written as IPv6 (``::ffff:a.b.c.d``)
    as that IPv4 address."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:  # not an address (a test client's name): counted as itself
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


NO_AUTH_FAILURE_LIMIT = AuthFailureLimit(0, 0, LocalMinuteCounts())


def auth_failure_limit(per_address: int, per_key: int, redis_url: str | None) -> AuthFailureLimit:
    if not (per_address or per_key):
        return NO_AUTH_FAILURE_LIMIT
    counts = RedisMinuteCounts(redis_url, "failed authentications") if redis_url else LocalMinuteCounts()
    return AuthFailureLimit(per_address, per_key, counts)


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
