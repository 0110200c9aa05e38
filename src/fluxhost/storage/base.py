"""Where task files live: the seam every reader and writer of files goes through.

A task's files sit in a folder named by 64 random hex digits: the URL is the capability, as with
the hosted service's CDN links. The embedded default is a local folder served by the API; an
object store (S3 and its kin) is the other backend.
"""

from __future__ import annotations

import re
import secrets
from typing import Protocol

_FOLDER = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def new_folder() -> str:
    """A fresh, unguessable folder name for one task's files."""
    return secrets.token_hex(32)


def well_formed(folder: str, name: str) -> bool:
    return bool(_FOLDER.fullmatch(folder) and _NAME.fullmatch(name))


class FileStore(Protocol):
    """Where a store fails (a full or unwritable disk, an object store that refuses or cannot be
    reached), its methods raise :class:`OSError`."""

    def new_folder(self) -> str:
        """A fresh, unguessable folder name for one task's files."""

    def save(self, folder: str, name: str, data: bytes) -> None: ...

    def read(self, folder: str, name: str) -> bytes | None:
        """The file's bytes; None for a malformed reference or a file that is not there."""

    def url(self, folder: str, name: str) -> str:
        """Where a client downloads the file."""

    def delete(self, folder: str, name: str) -> None:
        """Remove the file (and its folder once empty); a missing file is not an error."""

    def clear(self, folder: str) -> None:
        """Remove every file of the folder (what a run that died before recording them left)."""

    def find(self, url: str) -> tuple[str, str] | None:
        """The (folder, name) of a URL this store handed out, or None for any other URL."""
