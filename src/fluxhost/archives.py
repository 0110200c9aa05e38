"""ZIP archives sent to File/Upload, unpacked member by member within limits: a training set
arrives as one archive of pictures and their ``.txt`` captions.

Only the members' own names are kept (never their folders: nothing is written where an archive
says; an archive naming a member outside its folder is refused outright), hidden files and macOS
resource forks are skipped, and both the count and the unpacked bytes are bounded as they are
read, whatever the archive declares.
"""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import PurePosixPath

ZIP_MAGIC = b"PK\x03\x04"
# What zipfile raises, besides its own BadZipFile, for an archive damaged here or there (a record
# cut short, a name that is not text, a deflate stream that does not decode, an odd method).
DAMAGED = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, IndexError, KeyError, ValueError, RuntimeError,
           NotImplementedError, OSError)
ENTRY_BYTES = 2048
"""Bytes of central directory allowed per member an archive may hold (its record and name are
usually under 200, twice that with a hidden resource fork beside it): zipfile reads the whole
directory, a record in memory per entry, before any member can be counted."""
_END = struct.Struct("<4s4H2LH")  # the end of central directory record
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")


class ArchiveRefused(ValueError):
    """An archive that cannot be unpacked here; the message says why, as a predicate of it."""


def is_zip(data: bytes) -> bool:
    return data.startswith(ZIP_MAGIC)


def members(data: bytes, max_members: int, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    """(name, content) of each file in the archive, in its order; :class:`ArchiveRefused` for a
    broken archive, or one over ``max_members`` files or ``max_bytes`` unpacked."""
    directory = _directory_size(data)
    if directory is not None and directory > max(max_members, 1) * ENTRY_BYTES:
        raise ArchiveRefused(f"holds more than {max_members} files")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except DAMAGED as error:
        raise ArchiveRefused(f"is not a readable ZIP archive ({error})") from None
    if any(not entry.filename for entry in entries):
        raise ArchiveRefused("has a member without a name")
    escaping = next((entry.filename for entry in entries if _escapes(entry.filename)), None)
    if escaping is not None:
        raise ArchiveRefused(f"has a member whose path leaves the archive's folder ({escaping[:100]})")
    files = [entry for entry in entries if not entry.is_dir() and _kept(entry.filename)]
    if len(files) > max_members:
        raise ArchiveRefused(f"holds more than {max_members} files")
    unpacked = 0
    for entry in files:
        try:
            with archive.open(entry) as member:
                content = member.read(max_bytes - unpacked + 1)
        except DAMAGED as error:
            raise ArchiveRefused(f"has a member that cannot be read ({entry.filename}: {error})") from None
        unpacked += len(content)
        if unpacked > max_bytes:
            raise ArchiveRefused(f"unpacks to more than {max_bytes // 1_000_000} MB")
        yield PurePosixPath(entry.filename.replace("\\", "/")).name, content


def _directory_size(data: bytes) -> int | None:
    """The size its end record gives the archive's central directory (ZIP64's where the plain one
    says it is too large to say); None where no end record is found (zipfile then refuses it)."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - _END.size - 0xFFFF))
    if end < 0 or len(data) - end < _END.size:
        return None
    size = _END.unpack_from(data, end)[5]  # the directory's size (6: its offset, after every member)
    locator = end - _END64_LOCATOR.size
    if size != 0xFFFFFFFF or locator < 0 or data[locator:locator + 4] != b"PK\x06\x07":
        return size
    record = _END64_LOCATOR.unpack_from(data, locator)[2]
    if record + _END64.size > len(data) or data[record:record + 4] != b"PK\x06\x06":
        return size
    return _END64.unpack_from(data, record)[8]


def _escapes(path: str) -> bool:
    """A member named to be unpacked outside the folder: absolute, on a drive, or climbing up."""
    posix = path.replace("\\", "/")
    return posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or ".." in PurePosixPath(posix).parts


def _kept(path: str) -> bool:
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return bool(parts) and parts[0] != "__MACOSX" and not parts[-1].startswith(".")
