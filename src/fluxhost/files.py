"""Where task files live: the seam every reader and writer of files goes through.

The embedded default is a local folder served by the API at ``{public_url}/files/{folder}/{name}``,
where ``folder`` is 64 random hex digits: the URL is the capability, as with the hosted service's
CDN links. An object store replaces it by implementing :class:`FileStore`.
"""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path
from typing import Protocol

_FOLDER = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class FileStore(Protocol):
    def new_folder(self) -> str:
        """A fresh, unguessable folder name for one task's files."""

    def save(self, folder: str, name: str, data: bytes) -> None: ...

    def read(self, folder: str, name: str) -> bytes | None:
        """The file's bytes; None for a malformed reference or a file that is not there."""

    def url(self, folder: str, name: str) -> str:
        """Where a client downloads the file."""

    def delete(self, folder: str, name: str) -> None:
        """Remove the file (and its folder once empty); a missing file is not an error."""

    def find(self, url: str) -> tuple[str, str] | None:
        """The (folder, name) of a URL this store handed out, or None for any other URL."""


class LocalFileStore:
    def __init__(self, root: Path, public_url: str):
        self.root = root
        self.public_url = public_url.rstrip("/")

    def new_folder(self) -> str:
        return secrets.token_hex(32)

    def save(self, folder: str, name: str, data: bytes) -> None:
        # Written in place: no URL to it exists until the task row records the output.
        path = self._path(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def read(self, folder: str, name: str) -> bytes | None:
        if not _FOLDER.fullmatch(folder) or not _NAME.fullmatch(name):
            return None
        try:
            return self._path(folder, name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def url(self, folder: str, name: str) -> str:
        return f"{self.public_url}/files/{folder}/{name}"

    def delete(self, folder: str, name: str) -> None:
        path = self._path(folder, name)
        path.unlink(missing_ok=True)
        if path.parent.exists() and not any(path.parent.iterdir()):
            shutil.rmtree(path.parent, ignore_errors=True)

    def find(self, url: str) -> tuple[str, str] | None:
        prefix = f"{self.public_url}/files/"
        if not url.startswith(prefix):
            return None
        folder, _, name = url[len(prefix):].partition("/")
        return (folder, name) if _FOLDER.fullmatch(folder) and _NAME.fullmatch(name) else None

    def _path(self, folder: str, name: str) -> Path:
        if not _FOLDER.fullmatch(folder) or not _NAME.fullmatch(name):
            raise ValueError("malformed file reference")
        return self.root / folder[:2] / folder / name
