"""The dispatch seam. The database is the queue: a dispatcher only tells workers that a task is
waiting, and a worker takes it by an atomic state change in the store, so a lost or repeated
message never loses or doubles a task."""

from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    def start(self) -> None: ...

    def notify(self, task_id: int, model_slug: str) -> None:
        """Task ``task_id`` of ``model_slug`` was queued (or queued again)."""

    def load_error(self, slug: str) -> str | None:
        """Why ``slug`` cannot run: its model failed to load wherever this dispatcher's workers
        are; None when it loaded, is still loading, or cannot be known here."""

    def not_ready(self) -> str | None:
        """Why this process's workers cannot take tasks now (loading, no model loaded, not
        running); None when they can, or when the workers live elsewhere."""

    def metrics(self) -> bytes:
        """The Prometheus exposition of this process's workers (empty where they live elsewhere)."""

    def stop(self, grace_seconds: float = 0.0) -> None:
        """Take no more tasks; let the running ones finish for up to ``grace_seconds``, then stop
        them (their tasks stay held, for the caller to release)."""
