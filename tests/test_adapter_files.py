"""A worker's adapter files: uploaded adapters copied into its cache folder by content digest,
within a disk bound: past it the least recently used copies go, never one used moments ago."""

import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from fluxhost.orders import FileRef, LoraRef
from fluxhost.runtime.adapter_files import IN_USE_SECONDS, AdapterFiles
from fluxhost.settings import Settings
from fluxhost.storage.local import LocalFileStore
from fluxhost.urlguard import Allowlist


def test_past_the_bound_the_least_recently_used_copies_go_never_one_just_used(tmp_path):
    store = LocalFileStore(tmp_path / "files", "http://127.0.0.1:8000")
    cache = tmp_path / "loras"
    files = AdapterFiles(store, cache, None, Allowlist.parse(""), max_bytes=0, fetch_seconds=10,
                         max_cache_bytes=2500)

    def uploaded(data: bytes) -> LoraRef:
        folder = store.new_folder()
        store.save(folder, "upload.safetensors", data)
        return LoraRef(source="upload", name="x", file=FileRef(folder=folder, name="upload.safetensors",
                                                               content_type="application/octet-stream",
                                                               size=len(data)))

    first, second, third = (uploaded(bytes([number]) * 1000) for number in range(3))
    cache.mkdir()
    left = cache / f"{'0' * 64}.safetensors.7.8.partial"  # what a worker killed mid-write left
    left.write_bytes(b"part")
    copies = [Path(files.local(lora).path) for lora in (first, second)]
    long_ago = time.time() - IN_USE_SECONDS - 60
    for age, path in enumerate([left, *copies]):
        os.utime(path, (long_ago + age, long_ago + age))
    files.local(first)  # used again: the second is now the least recently used
    newest = Path(files.local(third).path)  # 3,000 bytes: one copy must go, and the old partial file
    assert sorted(cache.iterdir()) == sorted([copies[0], newest])

    again = files.local(second)  # copied again; all three used just now: kept, past the bound
    assert Path(again.path).read_bytes() == bytes([1]) * 1000
    assert len(list(cache.iterdir())) == 3

    unbounded = AdapterFiles(store, tmp_path / "all", None, Allowlist.parse(""), max_bytes=0, fetch_seconds=10)
    for lora in (first, second, third):
        os.utime(unbounded.local(lora).path, (long_ago, long_ago))
    assert len(list((tmp_path / "all").iterdir())) == 3


def test_the_cache_is_never_the_library_it_would_trim(tmp_path):
    with pytest.raises(ValidationError, match="must not be lora_dir"):
        Settings(data_dir=tmp_path, lora_dir=tmp_path / "loras")  # the cache's default folder
    with pytest.raises(ValidationError, match="must not be lora_dir"):
        Settings(data_dir=tmp_path, lora_dir=tmp_path / "library", lora_cache_dir=tmp_path / "library/")
    assert Settings(data_dir=tmp_path, lora_dir=tmp_path / "library").lora_cache_dir is None
