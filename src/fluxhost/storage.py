"""Where output files live. The embedded default is a local folder served by the API at
``{public_url}/files/{folder}/{name}``, where ``folder`` is 64 random hex digits: the URL is the
capability, as with the hosted service's CDN links."""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path
from typing import Protocol

_FOLDER = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class Storage(Protocol):
    def new_folder(self) -> str: ...

    def save(self, folder: str, name: str, data: bytes) -> None: ...

    def url(self, folder: str, name: str) -> str: ...

    def delete(self, folder: str, name: str) -> None: ...


class LocalStorage:
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

    def url(self, folder: str, name: str) -> str:
        return f"{self.public_url}/files/{folder}/{name}"

    def delete(self, folder: str, name: str) -> None:
        path = self._path(folder, name)
        path.unlink(missing_ok=True)
        if path.parent.exists() and not any(path.parent.iterdir()):
            shutil.rmtree(path.parent, ignore_errors=True)

    def open_path(self, folder: str, name: str) -> Path | None:
        """The file behind a URL, or None for a malformed or unknown one."""
        if not _FOLDER.fullmatch(folder) or not _NAME.fullmatch(name):
            return None
        path = self._path(folder, name)
        return path if path.is_file() else None

    def _path(self, folder: str, name: str) -> Path:
        if not _FOLDER.fullmatch(folder) or not _NAME.fullmatch(name):
            raise ValueError("malformed file reference")
        return self.root / folder[:2] / folder / name
