"""Where task files live: the seam every reader and writer of files goes through.

A task's files sit in a folder named by 64 random hex digits: the URL is the capability, as with
the hosted service's CDN links. The embedded default is a local folder served by the API; an
object store (S3 and its kin) is the other backend.
"""

from __future__ import annotations

import mimetypes
import re
import secrets
from pathlib import Path
from typing import Protocol

_FOLDER = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
                  "txt": "text/plain", "json": "application/json", "zip": "application/zip"}
"""The types of what the stores keep (pictures, captions, manifests, archives): Python's own table,
without the host's /etc/mime.types, has no WebP."""


def new_folder() -> str:
    """A fresh, unguessable folder name for one task's files."""
    return secrets.token_hex(32)


def well_formed(folder: str, name: str) -> bool:
    return bool(_FOLDER.fullmatch(folder) and _NAME.fullmatch(name))


def content_type(name: str) -> str:
    """The Content-Type a file named ``name`` is served with."""
    extension = name.rpartition(".")[2].lower()
    return _CONTENT_TYPES.get(extension) or mimetypes.guess_type(name)[0] or "application/octet-stream"


class FileStore(Protocol):
    """Where a store fails (a full or unwritable disk, an object store that refuses or cannot be
    reached), its methods raise :class:`OSError`."""

    def new_folder(self) -> str:
        """A fresh, unguessable folder name for one task's files."""

    def save(self, folder: str, name: str, data: bytes) -> None: ...

    def read(self, folder: str, name: str) -> bytes | None:
        """The file's bytes; None for a malformed reference or a file that is not there."""

    def local_path(self, folder: str, name: str) -> Path | None:
        """Where the file is on this machine's disk, to be served from there (streamed, a range of
        it, its size alone); None for a malformed reference or a store whose files are elsewhere."""

    def url(self, folder: str, name: str) -> str:
        """Where a client downloads the file."""

    def delete(self, folder: str, name: str) -> None:
        """Remove the file (and its folder once empty); a missing file is not an error."""

    def clear(self, folder: str) -> None:
        """Remove every file of the folder (what a run that died before recording them left)."""

    def find(self, url: str) -> tuple[str, str] | None:
        """The (folder, name) of a URL this store handed out, or None for any other URL."""
