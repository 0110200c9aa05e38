"""The uploads and file folders tables: every statement that touches them.

An upload is recorded before its file is written (:meth:`UploadStore.reserve`), so no stored file
goes unrecorded, and its size is counted against the project's quota in the same transaction.
What a caller looks up is scoped to its project: no project sees or deletes another's uploads
(only the janitor's search for expired ones spans them all).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass

from sqlalchemy import Row, bindparam, delete, func, insert, select

from fluxhost.store.database import Database
from fluxhost.store.schema import file_folders, projects, uploads

_LOCK_PROJECT = select(projects.c.id).where(projects.c.id == bindparam("project_id")).with_for_update()
_BYTES_OF_PROJECT = (select(func.coalesce(func.sum(uploads.c.size), 0))
                     .where(uploads.c.project_id == bindparam("project_id")))
_UPLOAD_OF_PROJECT = select(uploads).where(uploads.c.id == bindparam("upload_id"),
                                           uploads.c.project_id == bindparam("project_id"))
_FOLDER_OF_PROJECT = select(file_folders).where(file_folders.c.id == bindparam("folder_id"),
                                                file_folders.c.project_id == bindparam("project_id"))
_REMOVE = delete(uploads).where(uploads.c.id == bindparam("upload_id"),
                                uploads.c.project_id == bindparam("project_id"))


@dataclass(frozen=True)
class UploadView:
    """An upload as read back."""

    id: str
    project_id: int
    api_key_id: int | None
    name: str  # as the client named it, made fit to show
    folder: str  # the unguessable part of its URL
    file_name: str  # its name in the folder
    content_type: str
    size: int
    created_at: float
    parent_id: str | None = None  # the file folder it is in

    @classmethod
    def of(cls, row: Row) -> UploadView:
        return cls(row.id, row.project_id, row.api_key_id, row.name, row.folder, row.file_name, row.content_type,
                   row.size, row.created_at, row.parent_id)


@dataclass(frozen=True)
class FolderView:
    """A file folder as read back."""

    id: str
    project_id: int
    name: str
    parent_id: str | None
    created_at: float

    @classmethod
    def of(cls, row: Row) -> FolderView:
        return cls(row.id, row.project_id, row.name, row.parent_id, row.created_at)


@dataclass(frozen=True)
class NewUpload:
    """What a caller asks to keep: its record's fields but the id and the time."""

    project_id: int
    api_key_id: int | None
    name: str
    folder: str
    file_name: str
    content_type: str
    size: int
    parent_id: str | None = None


def upload_record(upload: NewUpload, upload_id: str, now: float) -> dict[str, object]:
    """The uploads row of ``upload``."""
    return {"id": upload_id, **asdict(upload), "created_at": now}


class UploadStore:
    def __init__(self, db: Database):
        self._db = db

    def reserve(self, upload: NewUpload, quota_bytes: int, now: float) -> UploadView | None:
        """Record an upload whose file is about to be written; None when it would take its project
        past ``quota_bytes`` (0: no quota). A project's reservations take turns (its row is locked
        on PostgreSQL; SQLite has one writer at a time), so uploads sent together cannot pass the
        quota between them."""
        record = upload_record(upload, uuid.uuid4().hex, now)
        with self._db.write() as connection:
            if quota_bytes:
                connection.execute(_LOCK_PROJECT, {"project_id": upload.project_id})
                used = connection.execute(_BYTES_OF_PROJECT, {"project_id": upload.project_id}).scalar_one()
                if used + upload.size > quota_bytes:
                    return None
            connection.execute(insert(uploads), record)
        return UploadView(**record)

    def bytes_used(self, project_id: int) -> int:
        with self._db.read() as connection:
            return int(connection.execute(_BYTES_OF_PROJECT, {"project_id": project_id}).scalar_one())

    def find(self, project_id: int, upload_id: str) -> UploadView | None:
        with self._db.read() as connection:
            row = connection.execute(_UPLOAD_OF_PROJECT, {"project_id": project_id, "upload_id": upload_id}).first()
        return UploadView.of(row) if row else None

    def list(self, project_id: int, start: int, limit: int, newest_first: bool = True,
             parent_id: str | None = None) -> tuple[int, list[UploadView]]:
        """The project's uploads (those of one of its folders, with ``parent_id``): how many in
        all, and one page of them."""
        order = (uploads.c.created_at.desc(), uploads.c.id.desc()) if newest_first else (
            uploads.c.created_at, uploads.c.id)
        chosen = [uploads.c.project_id == project_id]
        if parent_id is not None:
            chosen.append(uploads.c.parent_id == parent_id)
        page = select(uploads).where(*chosen).order_by(*order).offset(start).limit(limit)
        with self._db.read() as connection:
            total = connection.execute(select(func.count()).select_from(uploads).where(*chosen)).scalar_one()
            rows = connection.execute(page).all()
        return total, [UploadView.of(row) for row in rows]

    def create_folder(self, project_id: int, name: str, parent_id: str | None, now: float) -> FolderView:
        record = {"id": uuid.uuid4().hex, "project_id": project_id, "name": name, "parent_id": parent_id,
                  "created_at": now}
        with self._db.write() as connection:
            connection.execute(insert(file_folders), record)
        return FolderView(**record)

    def find_folder(self, project_id: int, folder_id: str) -> FolderView | None:
        with self._db.read() as connection:
            row = connection.execute(_FOLDER_OF_PROJECT, {"project_id": project_id, "folder_id": folder_id}).first()
        return FolderView.of(row) if row else None

    def created_before(self, moment: float, skip: int = 0, limit: int = 500) -> list[UploadView]:
        """Any project's uploads made before ``moment``, oldest first (those that expire), past the
        first ``skip`` of them."""
        query = (select(uploads).where(uploads.c.created_at < moment).order_by(uploads.c.created_at, uploads.c.id)
                 .offset(skip).limit(limit))
        with self._db.read() as connection:
            return [UploadView.of(row) for row in connection.execute(query).all()]

    def remove(self, upload: UploadView) -> bool:
        """Forget an upload (its file is the caller's to delete); False if it was already gone."""
        with self._db.write() as connection:
            return bool(connection.execute(_REMOVE, {"upload_id": upload.id, "project_id": upload.project_id}).rowcount)
