"""Task files in a local folder, served by the API at ``{public_url}/files/{folder}/{name}``."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

from fluxhost.storage.base import new_folder, well_formed


class LocalFileStore:
    def __init__(self, root: Path, public_url: str):
        self.root = root
        self.public_url = public_url.rstrip("/")

    def new_folder(self) -> str:
        return new_folder()

    def save(self, folder: str, name: str, data: bytes) -> None:
        """Written whole or not at all: to a hidden name beside it (one no URL can name), then
        renamed over it. A reader never sees part of a file, even one rewritten in place (a
        training's manifest) by a worker killed mid-write. No URL to it exists until the task row
        records the output. A write that fails (disk full, folder unwritable) leaves nothing behind."""
        path = self._path(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{name}.{secrets.token_hex(4)}.partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, path)
        except OSError:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
                path.parent.rmdir()  # only where empty: a folder made for this file
            raise

    def read(self, folder: str, name: str) -> bytes | None:
        if not well_formed(folder, name):
            return None
        try:
            return self._path(folder, name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def local_path(self, folder: str, name: str) -> Path | None:
        return self._path(folder, name) if well_formed(folder, name) else None

    def url(self, folder: str, name: str) -> str:
        return f"{self.public_url}/files/{folder}/{name}"

    def delete(self, folder: str, name: str) -> None:
        path = self._path(folder, name)
        path.unlink(missing_ok=True)
        if path.parent.exists() and not any(path.parent.iterdir()):
            shutil.rmtree(path.parent, ignore_errors=True)

    def clear(self, folder: str) -> None:
        path = self._path(folder, "any").parent
        if path.exists():
            shutil.rmtree(path)

    def find(self, url: str) -> tuple[str, str] | None:
        prefix = f"{self.public_url}/files/"
        if not url.startswith(prefix):
            return None
        folder, _, name = url[len(prefix):].partition("/")
        return (folder, name) if well_formed(folder, name) else None

    def _path(self, folder: str, name: str) -> Path:
        if not well_formed(folder, name):
            raise ValueError("malformed file reference")
        return self.root / folder[:2] / folder / name
