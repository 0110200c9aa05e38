"""The database schema (SQLAlchemy 2 models).

The same models run on SQLite (the embedded default, in WAL mode) and PostgreSQL; the schema is
created and upgraded only by the Alembic migrations in ``fluxhost/migrations``.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from fluxhost.statuses import Status

ALPHANUMERIC = string.ascii_letters + string.digits


# Random bytes map onto the 62 characters four times over; the 8 bytes above 247 are dropped, so
# every character stays equally likely (a character per ``secrets.choice`` costs 30x the time).
_CHARACTER_OF_BYTE = bytes(ord(ALPHANUMERIC[byte % len(ALPHANUMERIC)]) for byte in range(256))
_BIASED_BYTES = bytes(range(256 - 256 % len(ALPHANUMERIC), 256))


def random_token(length: int) -> str:
    """A random alphanumeric string: keys, secrets, socket tokens, access keys."""
    drawn = b""
    while len(drawn) < length:
        drawn += secrets.token_bytes(length).translate(_CHARACTER_OF_BYTE, _BIASED_BYTES)
    return drawn[:length].decode()


class Base(DeclarativeBase):
    pass


class Project(Base):
    """A tenant: keys and tasks belong to one; nothing crosses between projects."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    """A credential of a project. The key itself is kept only as a SHA-256 digest; the secret
    is kept as given because signature checks need it (HMAC over secret + nonce)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key_digest: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(12))
    secret: Mapped[str] = mapped_column(String(100))
    mode: Mapped[str] = mapped_column(String(20))  # "signature" or "key-only"
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    project: Mapped[Project] = relationship(lazy="joined")


class SpentRequest(Base):
    """A state-changing request already accepted, remembered for the retention period so that an
    exact resend (same key, nonce, path and body) is refused. ``request_digest`` is SHA-256 over
    the path and the body."""

    __tablename__ = "spent_requests"

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(40), primary_key=True)
    request_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    used_at: Mapped[float] = mapped_column(Float, index=True)


class Heartbeat(Base):
    """One row, rewritten by each readiness check: a committed write is what shows that the
    database takes writes (a full disk, a read-only file or replica still answer reads)."""

    __tablename__ = "heartbeat"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    beat_at: Mapped[float] = mapped_column(Float)


class UnfinishedTally(Base):
    """How many queued or running tasks each API key and project has (``scope`` "key" or
    "project", ``subject`` its id), and how many wait in each model's queue ("queued", the slug):
    what the limits on unfinished tasks check at every Run. On SQLite, triggers on ``tasks`` keep
    it (migration 0011), so a Run reads three rows however deep the queue; PostgreSQL counts the
    tasks instead, as its fleet's API processes would otherwise take turns on these rows' locks."""

    __tablename__ = "unfinished_tallies"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class Task(Base):
    """One Run: the single source of truth for its status; queues and events carry only ids."""

    __tablename__ = "tasks"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    socket_token: Mapped[str] = mapped_column(String(30), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    api_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the key that made it
    # Where the outputs of its current (or last) run go, new at each claim; and the run before's,
    # which the next run clears (what a run that died left there was never recorded).
    files_folder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_files_folder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_slug: Mapped[str] = mapped_column(String(200), index=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    work_order: Mapped[dict[str, Any]] = mapped_column(JSON)  # fluxhost.orders.WorkOrder: what the worker runs
    callback_url: Mapped[str] = mapped_column(String(2083), default="")
    status: Mapped[str] = mapped_column(String(32), index=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)  # fluxhost.statuses.Outcome once ended
    debug_output: Mapped[str] = mapped_column(Text, default="")
    debug_error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When it was last queued (its Run, or its return to the queue), and when a broker took a message
    # for that queueing (a Celery fleet): a queued task no message names, its API gone before the
    # broker took one, is found and sent (fluxhost.runtime.dispatch.celery).
    queued_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    message_time: Mapped[float | None] = mapped_column(Float, nullable=True)

    create_time: Mapped[float] = mapped_column(Float)
    accept_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    preprocess_start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    preprocess_end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    assign_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    postprocess_start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    postprocess_end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_time: Mapped[float | None] = mapped_column(Float, nullable=True)

    outputs: Mapped[list[Output]] = relationship(
        lazy="selectin", order_by="Output.name", cascade="all, delete-orphan"
    )


class Output(Base):
    """One file a task made."""

    __tablename__ = "outputs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    folder: Mapped[str] = mapped_column(String(64))  # the unguessable part of the URL
    access_key: Mapped[str] = mapped_column(String(30))
    added_at: Mapped[float] = mapped_column(Float)


class CallbackDelivery(Base):
    """The callback owed for one finished task; retried until delivered or given up."""

    __tablename__ = "callback_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), unique=True)
    url: Mapped[str] = mapped_column(String(2083))
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, index=True)
    claim: Mapped[str] = mapped_column(String(32), default="")  # the token of the sender posting it now
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class CallbackAttempt(Base):
    """One POST of a callback and what came of it."""

    __tablename__ = "callback_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("callback_deliveries.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    duration: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")


class FileFolder(Base):
    """A folder of a project's uploads (File/FolderCreate), such as a training set: its pictures and
    their captions. Folders nest; what a caller reaches is scoped to its project."""

    __tablename__ = "file_folders"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("file_folders.id"), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class Upload(Base):
    """A file a project stored for later Runs (File/Upload). Recorded before its file is written,
    so every stored upload can be listed, deleted, expired and counted against its project's quota."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    api_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the key that sent it
    name: Mapped[str] = mapped_column(String(200))  # as the client named it, made fit to show; never a path
    folder: Mapped[str] = mapped_column(String(64))  # the unguessable part of the URL
    file_name: Mapped[str] = mapped_column(String(200))  # the file's name in its folder (the server's)
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)  # its FileFolder, if any


projects = Project.__table__
tasks = Task.__table__
outputs = Output.__table__
deliveries = CallbackDelivery.__table__
attempts = CallbackAttempt.__table__
uploads = Upload.__table__
file_folders = FileFolder.__table__
unfinished_tallies = UnfinishedTally.__table__

# The task column each status stamps with the time it was reached.
TIME_COLUMN = {
    Status.ACCEPT: "accept_time",
    Status.PREPROCESS_START: "preprocess_start_time",
    Status.PREPROCESS_END: "preprocess_end_time",
    Status.ASSIGN: "assign_time",
    Status.START: "start_time",
    Status.END: "end_time",
    Status.POSTPROCESS_START: "postprocess_start_time",
    Status.POSTPROCESS_END: "postprocess_end_time",
    Status.CANCEL: "cancel_time",
}
