"""Callbacks: a signed POST of the task's Task/Detail answer to the ``callbackUrl`` given at Run.

Signed the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``, ``webhook-signature:
v1,<base64 HMAC-SHA256 of "id.timestamp.body">``) with the project's ``whsec_`` secret. Retried
with exponential backoff and jitter on connection errors, timeouts, 429 and 5xx; given up on
other answers. The delivery owed is written in the transaction that ends the task, and every
attempt is recorded, so deliveries survive restarts and can be inspected.

URLs are checked against server-side request forgery: http(s) only, at most 2083 characters, and
a host whose addresses are all public unless ``FLUXHOST_CALLBACK_ALLOWLIST`` admits it; redirects
are never followed, timeouts and response reads are bounded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, insert, select, update

from fluxhost.db import CallbackAttempt, CallbackDelivery, Database, Project, Task
from fluxhost.events import EventBus, TaskEvent
from fluxhost.store import TaskRecord, TaskStore
from fluxhost.tasks import TERMINAL

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2083
MAX_RESPONSE_BYTES = 64 * 1024
CLAIM_SECONDS = 120.0  # a delivery being sent is not due again before this (a crash mid-send)
SENDERS = 4
PASS_INTERVAL = 0.05  # passes over due deliveries are at least this far apart: task ends coalesce
IDLE_SECONDS = 5.0  # also finds deliveries owed by tasks that ended in other processes
deliveries = CallbackDelivery.__table__
attempts = CallbackAttempt.__table__
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(ValueError):
    """A callback URL fluxhost will not call; ``str(error)`` says why, for the caller."""


@dataclass(frozen=True)
class Allowlist:
    """Hosts and networks callbacks may reach although they are not public."""

    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        hosts, networks = set(), []
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def admits(self, host: str, address: Address) -> bool:
        return host.lower().rstrip(".") in self.hosts or any(address in network for network in self.networks)


def _is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_callback_url(url: str, allowlist: Allowlist) -> None:
    """Refuse a URL that is not http(s), too long, unresolvable, or resolves to a loopback,
    private, link-local, multicast or reserved address the allowlist does not admit."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(
            f"Request parameter [callbackUrl] must be an http or https URL of at most {MAX_URL_LENGTH} characters"
        )
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        raise CallbackRefused(f"Request parameter [callbackUrl] host {host} cannot be resolved") from None
    for *_, sockaddr in found:
        address = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if not _is_public(address) and not allowlist.admits(host, address):
            raise CallbackRefused(
                f"Request parameter [callbackUrl] points to a non-public address ({address}); "
                "the server admits such hosts only through FLUXHOST_CALLBACK_ALLOWLIST"
            )


def sign_webhook(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for a Standard Webhooks ``whsec_`` secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str
    retry: bool

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class CallbackSender:
    """Sends the callbacks the database says are due, in a thread next to the API."""

    def __init__(
        self,
        db: Database,
        store: TaskStore,
        events: EventBus,
        render: Callable[[TaskRecord], dict[str, Any]],
        allowlist: Allowlist,
        max_attempts: int,
        backoff_seconds: float,
        timeout_seconds: float,
    ):
        self.db = db
        self.store = store
        self.render = render
        self.allowlist = allowlist
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.timeout = httpx.Timeout(timeout_seconds, connect=min(5.0, timeout_seconds))
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
                for delivery_id in self._claim_due():
                    self._pool.submit(self._deliver, delivery_id)
                wait = self._seconds_to_next()
            except Exception:
                log.exception("callback pass failed")
                wait = 1.0
            self._stopping.wait(min(wait, PASS_INTERVAL))
            self._wake.wait(max(0.0, wait - PASS_INTERVAL))
            self._wake.clear()

    def _claim_due(self) -> list[int]:
        now = time.time()
        with self.db.read() as connection:
            due = connection.execute(
                select(deliveries.c.id).where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now)
                .order_by(deliveries.c.next_attempt_at).limit(100)
            ).scalars().all()
        claimed = []
        for delivery_id in due:
            with self.db.write() as connection:
                if connection.execute(
                    update(deliveries)
                    .where(deliveries.c.id == delivery_id, deliveries.c.status == "pending",
                           deliveries.c.next_attempt_at <= now)
                    .values(next_attempt_at=now + CLAIM_SECONDS)
                ).rowcount:
                    claimed.append(delivery_id)
        return claimed

    def _seconds_to_next(self) -> float:
        with self.db.read() as connection:
            upcoming = connection.execute(
                select(func.min(deliveries.c.next_attempt_at)).where(deliveries.c.status == "pending")
            ).scalar()
        return IDLE_SECONDS if upcoming is None else min(IDLE_SECONDS, max(0.0, upcoming - time.time()))

    def _deliver(self, delivery_id: int) -> None:
        try:
            self._attempt(delivery_id)
        except Exception:
            log.exception("callback delivery %s failed unexpectedly", delivery_id)

    def _attempt(self, delivery_id: int) -> None:
        with self.db.read() as connection:
            delivery = connection.execute(
                select(deliveries.c.task_id, deliveries.c.url, deliveries.c.attempts, Project.webhook_secret)
                .join(Task, Task.id == deliveries.c.task_id)
                .join(Project, Project.id == Task.project_id)
                .where(deliveries.c.id == delivery_id)
            ).first()
        record = self.store.get(delivery.task_id)
        number = delivery.attempts + 1
        started = time.time()
        outcome = self._post(delivery.url, delivery_id, delivery.webhook_secret, record)
        finished = time.time()
        if outcome.delivered:
            status, next_at = "delivered", finished
        elif outcome.retry and number < self.max_attempts:
            status, next_at = "pending", finished + self.delay_before(number)
        else:
            status, next_at = "failed", finished
        with self.db.write() as connection:
            connection.execute(
                insert(attempts).values(delivery_id=delivery_id, number=number, started_at=started,
                                        duration=finished - started, status_code=outcome.status_code,
                                        error=outcome.error)
            )
            connection.execute(
                update(deliveries).where(deliveries.c.id == delivery_id).values(
                    status=status, attempts=number, next_attempt_at=next_at,
                    finished_at=None if status == "pending" else finished,
                )
            )
        log.info("callback for task %s, attempt %s: %s %s", delivery.task_id, number,
                 outcome.status_code or "-", status)
        if status == "pending":
            self._wake.set()

    def _post(self, url: str, delivery_id: int, secret: str, record: TaskRecord) -> Outcome:
        try:
            check_callback_url(url, self.allowlist)  # again: DNS may have changed since Run
        except CallbackRefused as error:
            return Outcome(None, str(error), retry=False)
        body = json.dumps(self.render(record)).encode()
        message_id = f"msg_{delivery_id}"
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "fluxhost-callbacks",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(secret, message_id, timestamp, body),
        }
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as client, client.stream(
                "POST", url, content=body, headers=headers
            ) as response:
                read = 0
                for chunk in response.iter_bytes():
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES:
                        break
        except httpx.TimeoutException:
            return Outcome(None, "timed out", retry=True)
        except httpx.HTTPError as error:
            return Outcome(None, f"{type(error).__name__}: {error}", retry=True)
        code = response.status_code
        if 200 <= code < 300:
            return Outcome(code, "", retry=False)
        if 300 <= code < 400:
            return Outcome(code, "redirects are not followed", retry=False)
        return Outcome(code, f"HTTP {code}", retry=code == 429 or code >= 500)


def list_deliveries(db: Database, task_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Deliveries, newest first, each with its attempts (for ``fluxhost callbacks list``)."""
    query = select(deliveries).order_by(deliveries.c.id.desc()).limit(limit)
    if task_id is not None:
        query = query.where(deliveries.c.task_id == task_id)
    with db.read() as connection:
        rows = connection.execute(query).all()
        tried = connection.execute(
            select(attempts).where(attempts.c.delivery_id.in_([row.id for row in rows])).order_by(attempts.c.number)
        ).all()
    by_delivery: dict[int, list[dict[str, Any]]] = {}
    for attempt in tried:
        by_delivery.setdefault(attempt.delivery_id, []).append(
            {"attempt": attempt.number, "started_at": attempt.started_at, "seconds": round(attempt.duration, 4),
             "status_code": attempt.status_code, "error": attempt.error}
        )
    return [
        {"id": row.id, "task_id": row.task_id, "url": row.url, "status": row.status, "attempts": row.attempts,
         "next_attempt_at": row.next_attempt_at if row.status == "pending" else None,
         "history": by_delivery.get(row.id, [])}
        for row in rows
    ]
