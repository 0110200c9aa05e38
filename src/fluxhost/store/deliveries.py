"""The callback deliveries table and its attempts: every statement that touches them.

A delivery is owed in the transaction that ends its task (:func:`owe_callback`), so a crash can
lose neither the end nor its callback; the sender claims due deliveries, posts them and records
each attempt here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, insert, literal, select, update

from fluxhost.store.database import Database
from fluxhost.store.schema import Project, attempts, deliveries, tasks

CLAIM_SECONDS = 120.0  # a delivery being sent is not due again before this (a crash mid-send)

_OWE_CALLBACK = insert(deliveries).from_select(
    ["task_id", "url", "status", "attempts", "next_attempt_at", "created_at"],
    select(tasks.c.id, tasks.c.callback_url, literal("pending"), literal(0), bindparam("now"), bindparam("now"))
    .where(tasks.c.id == bindparam("task_id"), tasks.c.callback_url != ""),
)
_DELIVERY_OF_TASK = select(deliveries).where(deliveries.c.task_id == bindparam("task_id"))
_ATTEMPTS_OF_DELIVERY = (
    select(attempts).where(attempts.c.delivery_id == bindparam("delivery_id")).order_by(attempts.c.number)
)


def owe_callback(connection: Connection, task_id: int, now: float) -> None:
    """Record, in the transaction that ends the task, the callback it owes (if it has a URL)."""
    connection.execute(_OWE_CALLBACK, {"task_id": task_id, "now": now})


def callback_of(connection: Connection, task_id: int) -> tuple[Row | None, list[Row]]:
    """A task's delivery and its attempts, oldest first (None and [] when none is owed)."""
    delivery = connection.execute(_DELIVERY_OF_TASK, {"task_id": task_id}).first()
    if delivery is None:
        return None, []
    return delivery, connection.execute(_ATTEMPTS_OF_DELIVERY, {"delivery_id": delivery.id}).all()


@dataclass(frozen=True)
class DueDelivery:
    """What the sender needs to post one delivery."""

    id: int
    task_id: int
    url: str
    attempts: int
    webhook_secret: str


@dataclass(frozen=True)
class Attempt:
    """One POST of a callback and what came of it."""

    started_at: float
    duration: float
    status_code: int | None
    error: str


class Deliveries:
    """The sender's side: claim what is due, record what happened."""

    def __init__(self, db: Database):
        self._db = db

    def claim_due(self, now: float, limit: int = 100) -> list[DueDelivery]:
        """Deliveries due by ``now``, each claimed by pushing its next attempt :data:`CLAIM_SECONDS`
        ahead, so that no other sender takes it meanwhile."""
        with self._db.read() as connection:
            due = connection.execute(
                select(deliveries.c.id).where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now)
                .order_by(deliveries.c.next_attempt_at).limit(limit)
            ).scalars().all()
        claimed = []
        for delivery_id in due:
            with self._db.write() as connection:
                if connection.execute(
                    update(deliveries)
                    .where(deliveries.c.id == delivery_id, deliveries.c.status == "pending",
                           deliveries.c.next_attempt_at <= now)
                    .values(next_attempt_at=now + CLAIM_SECONDS)
                ).rowcount:
                    claimed.append(self._due(connection, delivery_id))
        return claimed

    def _due(self, connection: Connection, delivery_id: int) -> DueDelivery:
        row = connection.execute(
            select(deliveries.c.id, deliveries.c.task_id, deliveries.c.url, deliveries.c.attempts,
                   Project.webhook_secret)
            .join(tasks, tasks.c.id == deliveries.c.task_id)
            .join(Project, Project.id == tasks.c.project_id)
            .where(deliveries.c.id == delivery_id)
        ).one()
        return DueDelivery(*row)

    def seconds_to_next(self, longest: float) -> float:
        """How long until the next pending delivery is due, at most ``longest``."""
        with self._db.read() as connection:
            upcoming = connection.execute(
                select(func.min(deliveries.c.next_attempt_at)).where(deliveries.c.status == "pending")
            ).scalar()
        return longest if upcoming is None else min(longest, max(0.0, upcoming - time.time()))

    def record(self, delivery: DueDelivery, attempt: Attempt, status: str, next_attempt_at: float) -> None:
        """Store an attempt and where the delivery stands after it (pending, delivered, failed)."""
        with self._db.write() as connection:
            connection.execute(
                insert(attempts).values(delivery_id=delivery.id, number=delivery.attempts + 1,
                                        started_at=attempt.started_at, duration=attempt.duration,
                                        status_code=attempt.status_code, error=attempt.error)
            )
            connection.execute(
                update(deliveries).where(deliveries.c.id == delivery.id).values(
                    status=status, attempts=delivery.attempts + 1, next_attempt_at=next_attempt_at,
                    finished_at=None if status == "pending" else attempt.started_at + attempt.duration,
                )
            )

    def list(self, task_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Deliveries, newest first, each with its attempts (for ``fluxhost callbacks list``)."""
        query = select(deliveries).order_by(deliveries.c.id.desc()).limit(limit)
        if task_id is not None:
            query = query.where(deliveries.c.task_id == task_id)
        with self._db.read() as connection:
            rows = connection.execute(query).all()
            tried = connection.execute(
                select(attempts).where(attempts.c.delivery_id.in_([row.id for row in rows]))
                .order_by(attempts.c.number)
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
