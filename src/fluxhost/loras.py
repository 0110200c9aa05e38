"""LoRA adapter files before any engine sees them: the server's library folder, what a
safetensors file looks like, and the digest that names an adapter wherever it came from (the
library, a project's upload, a URL), so that the same bytes are loaded and cached once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SAFETENSORS_SUFFIX = ".safetensors"
SAFETENSORS_TYPE = "application/octet-stream"  # what an uploaded adapter is served as
_HEADER_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header


def is_safetensors(data: bytes) -> bool:
    """Whether ``data`` is a safetensors file: a little-endian header length, then that many bytes
    of a JSON object (the tensors' names, types, shapes and offsets), then the tensors."""
    if len(data) < _HEADER_LENGTH_BYTES + 2:
        return False
    length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], "little")
    if not 2 <= length <= min(_MAX_HEADER_BYTES, len(data) - _HEADER_LENGTH_BYTES):
        return False
    header = data[_HEADER_LENGTH_BYTES:_HEADER_LENGTH_BYTES + length]
    if not header.startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(header), dict)
    except (ValueError, RecursionError):  # not JSON (or not text), or nested past the parser's depth
        return False


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def library(folder: Path | None) -> tuple[str, ...]:
    """The adapters of the server's library (``FLUXHOST_LORA_DIR``): its ``.safetensors`` files
    by name, without the suffix, sorted."""
    if folder is None or not folder.is_dir():
        return ()
    return tuple(sorted(path.name.removesuffix(SAFETENSORS_SUFFIX) for path in folder.iterdir()
                        if path.name.endswith(SAFETENSORS_SUFFIX) and path.is_file()))


def library_file(folder: Path | None, name: str) -> Path | None:
    """The library's file for adapter ``name``, None when there is no such adapter (a name is only
    ever looked up among the folder's files, never joined into a path as given)."""
    if name not in library(folder):
        return None
    return folder / f"{name}{SAFETENSORS_SUFFIX}"
