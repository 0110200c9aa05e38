"""Tasks as the store hands them out: plain, frozen records, with the work order typed. Nothing
above the store sees a database row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row

from fluxhost.orders import FileRef, WorkOrder
from fluxhost.statuses import TERMINAL, Outcome, Status


@dataclass(frozen=True)
class OutputView:
    """One file a task made."""

    id: str
    name: str
    content_type: str
    size: int
    folder: str  # the unguessable part of its URL
    access_key: str
    added_at: float

    @classmethod
    def of(cls, row: Row) -> OutputView:
        return cls(row.id, row.name, row.content_type, row.size, row.folder, row.access_key, row.added_at)


@dataclass(frozen=True)
class AttemptView:
    """One POST of a task's callback and what came of it."""

    number: int
    started_at: float
    duration: float
    status_code: int | None
    error: str

    @classmethod
    def of(cls, row: Row) -> AttemptView:
        return cls(row.number, row.started_at, row.duration, row.status_code, row.error)


@dataclass(frozen=True)
class CallbackView:
    """Where a task's callback stands (pending, delivered, failed), with every attempt, oldest first."""

    status: str
    attempts: tuple[AttemptView, ...]


@dataclass(frozen=True)
class TaskView:
    """A task as read back, with its outputs and, when it has a callback URL, its callback."""

    id: int
    uuid: str
    socket_token: str
    project_id: int
    model_slug: str
    parameters: Mapping[str, Any]  # the inputs as sent, in the words of the door that took them
    order: WorkOrder
    callback_url: str
    status: Status
    outcome: Outcome | None  # None until it ends
    debug_output: str
    debug_error: str
    create_time: float
    accept_time: float | None
    preprocess_start_time: float | None
    preprocess_end_time: float | None
    assign_time: float | None
    start_time: float | None
    end_time: float | None
    postprocess_start_time: float | None
    postprocess_end_time: float | None
    cancel_time: float | None
    attempts: int  # runs begun (a run handed back at shutdown is not counted)
    worker_id: str | None  # who holds (or last held) it
    outputs: tuple[OutputView, ...] = ()
    callback: CallbackView | None = None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def ended_at(self) -> float | None:
        return self.postprocess_end_time or self.cancel_time

    @property
    def inputs(self) -> tuple[FileRef, ...]:
        """The input files kept with the task."""
        return self.order.input_images

    @property
    def moderated_prompt(self) -> bool:
        """Moderation refused what was asked (the prompt: its generation never started), rather than
        what was made (an image)."""
        return self.outcome is Outcome.MODERATED and self.start_time is None

    @classmethod
    def of(cls, row: Row, outputs: list[Row], callback: Row | None = None,
           attempts: list[Row] | None = None) -> TaskView:
        return cls(
            row.id, row.uuid, row.socket_token, row.project_id, row.model_slug, row.parameters,
            WorkOrder.decode(row.work_order), row.callback_url, Status(row.status),
            Outcome(row.outcome) if row.outcome else None, row.debug_output, row.debug_error,
            row.create_time, row.accept_time, row.preprocess_start_time, row.preprocess_end_time, row.assign_time,
            row.start_time, row.end_time, row.postprocess_start_time, row.postprocess_end_time, row.cancel_time,
            row.attempts, row.worker_id,
            tuple(OutputView.of(output) for output in outputs),
            None if callback is None else CallbackView(callback.status,
                                                       tuple(AttemptView.of(attempt) for attempt in attempts or ())),
        )
