"""A worker's LoRA adapter files: each :class:`~fluxhost.orders.LoraRef` of a task made a local
``.safetensors`` file named by its content digest, which is what the engine loads and caches by.

A library adapter is read where it lies (``FLUXHOST_LORA_DIR`` on the worker's machine); a
project's uploaded adapter is copied out of the file store once; an adapter by URL is fetched
through the SSRF guard, once per worker process and URL (a changed file needs a changed URL).

The copies and fetched files take at most ``max_cache_bytes`` of disk together: past it, the least
recently used go (fetched again, or copied again, when a task names them). A file used in the last
:data:`IN_USE_SECONDS` stays even beyond the bound: a task may be loading it, here or in another
worker sharing the folder.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from fluxhost.engines.base import Adapter
from fluxhost.input_images import ImageLimits, ImageRefused, fetch
from fluxhost.loras import SAFETENSORS_SUFFIX, digest, is_safetensors, library_file
from fluxhost.orders import LoraRef
from fluxhost.storage import FileStore
from fluxhost.urlguard import Allowlist

FETCHED_URLS_KEPT = 256
IN_USE_SECONDS = 120.0


class AdapterUnavailable(Exception):
    """An adapter could not be had; the message says which and why, for the task's ``debugerror``."""


class AdapterFiles:
    def __init__(self, files: FileStore, cache_dir: Path, library_dir: Path | None, allowlist: Allowlist,
                 max_bytes: int, fetch_seconds: float, max_cache_bytes: int = 0):
        """``max_bytes``: the largest adapter fetched by URL; ``max_cache_bytes``: the disk the
        cache folder may take (0: no bound)."""
        self.files = files
        self.cache_dir = cache_dir
        self.max_cache_bytes = max_cache_bytes
        self.library_dir = library_dir
        self.allowlist = allowlist
        self.limits = ImageLimits(max_bytes=max_bytes, max_pixels=0, timeout_seconds=fetch_seconds)
        self._digests: OrderedDict[object, str] = OrderedDict()  # a library file's state or a URL -> digest
        self._lock = threading.Lock()

    def local(self, lora: LoraRef) -> Adapter:
        """The adapter as a local file; :class:`AdapterUnavailable` saying why not."""
        if lora.source == "library":
            path = library_file(self.library_dir, lora.name)
            if path is None:
                raise AdapterUnavailable(f"the LoRA library of this worker has no adapter {lora.name!r}")
            stat = path.stat()
            state = (str(path), stat.st_mtime_ns, stat.st_size)
            known = self._known(state) or self._remember(state, digest(path.read_bytes()))
            return Adapter(str(path), known, lora.weight)
        if lora.file is not None:  # an upload, or a URL of this server's own files
            data = self.files.read(lora.file.folder, lora.file.name)
            if data is None:
                raise AdapterUnavailable(f"the uploaded LoRA adapter {lora.name} is no longer stored (deleted?)")
            return Adapter(str(self._kept(data)), digest(data), lora.weight)
        known = self._known(lora.name)
        if known is not None and _touched(self._cached(known)):
            return Adapter(str(self._cached(known)), known, lora.weight)
        try:
            data = fetch(lora.name, self.allowlist, self.limits)
        except ImageRefused as error:
            raise AdapterUnavailable(f"the LoRA adapter at selectedLoraModelPrivateUrl {error}") from None
        if not is_safetensors(data):
            raise AdapterUnavailable("the file at selectedLoraModelPrivateUrl is not a .safetensors LoRA adapter")
        path = self._kept(data)
        return Adapter(str(path), self._remember(lora.name, path.name.removesuffix(SAFETENSORS_SUFFIX)), lora.weight)

    def _known(self, key: object) -> str | None:
        with self._lock:
            return self._digests.get(key)

    def _remember(self, key: object, known: str) -> str:
        with self._lock:
            self._digests[key] = known
            self._digests.move_to_end(key)
            while len(self._digests) > FETCHED_URLS_KEPT:
                self._digests.popitem(last=False)
        return known

    def _cached(self, known: str) -> Path:
        return self.cache_dir / f"{known}{SAFETENSORS_SUFFIX}"

    def _kept(self, data: bytes) -> Path:
        """``data`` in the cache under its digest (written whole, then renamed into place), marked
        used now; what the new file takes past the bound, the least recently used give back."""
        path = self._cached(digest(data))
        if not _touched(path):
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.partial")
            partial.write_bytes(data)
            partial.replace(path)
            self._trim()
        return path

    def _trim(self) -> None:
        """Delete the least recently used files until the cache fits its bound, none used within
        :data:`IN_USE_SECONDS`; and what a worker killed mid-write left, as old."""
        if not self.max_cache_bytes:
            return
        with self._lock:
            kept, recent = [], time.time() - IN_USE_SECONDS
            for path in self.cache_dir.iterdir():
                try:
                    stat = path.stat()
                except FileNotFoundError:  # trimmed by another worker sharing the folder
                    continue
                if path.suffix == ".partial" and stat.st_mtime < recent:
                    path.unlink(missing_ok=True)
                elif path.suffix == SAFETENSORS_SUFFIX:
                    kept.append((stat, path))
            total = sum(stat.st_size for stat, _path in kept)
            for stat, path in sorted(kept, key=lambda entry: entry[0].st_mtime):
                if total <= self.max_cache_bytes or stat.st_mtime > recent:
                    break
                path.unlink(missing_ok=True)
                total -= stat.st_size


def _touched(path: Path) -> bool:
    """Mark the cached file used now (its modification time); False when it is not there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:  # a folder this worker reads but may not write (another user's, a read-only mount)
        return path.exists()
    return True
