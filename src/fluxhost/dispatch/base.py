"""The dispatch seam. The database is the queue: a dispatcher only tells workers that a task is
waiting, and a worker takes it by an atomic state change in the store, so a lost or repeated
message never loses or doubles a task."""

from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    def start(self) -> None: ...

    def notify(self, task_id: int, model_slug: str) -> None:
        """Task ``task_id`` of ``model_slug`` was queued (or queued again)."""

    def stop(self) -> None: ...
