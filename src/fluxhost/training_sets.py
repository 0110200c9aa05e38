"""A training Run's pictures with their captions, gathered and checked at Run: from a folder of the
project's uploads, or from a ZIP archive (bytes, a URL this server handed out, or one fetched
through the SSRF guard) whose pictures are kept for the task.

A caption is the ``.txt`` file of the same name as its picture (``cat.txt`` for ``cat.jpg``);
a picture without one is trained on the trigger word alone. Whatever is refused is refused here,
before anything is queued: no pictures, too many, a caption that is not text, a broken archive.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from fluxhost.archives import ArchiveRefused, is_zip
from fluxhost.archives import members as archive_members
from fluxhost.input_images import ImageLimits, ImageRefused, decode, fetch
from fluxhost.orders import FileRef, TrainingImage, TrainingRequest
from fluxhost.storage import FileStore
from fluxhost.store.uploads import UploadStore
from fluxhost.urlguard import Allowlist

CAPTION_SUFFIX, CAPTION_TYPE, CAPTION_MAX_BYTES = ".txt", "text/plain", 65_536
ARCHIVE_MAX_MEMBERS = 10_000
FOLDER_OTHER_FILES = 100
"""Files a training folder may hold besides its pictures and their captions (notes, a licence)."""


class TrainingSetRefused(ValueError):
    """``field``: the input at fault (``training_folder``, ``training_archive``); the message says why."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field = field
        self.problem = problem


def caption_text(data: bytes, name: str) -> str:
    """A caption file's text; :class:`ValueError` saying why it is none."""
    if len(data) > CAPTION_MAX_BYTES:
        raise ValueError(f"has a caption longer than {CAPTION_MAX_BYTES} bytes ({name})")
    try:
        return " ".join(data.decode("utf-8").split())
    except UnicodeDecodeError:
        raise ValueError(f"has a caption that is not UTF-8 text ({name})") from None


def _stem(name: str) -> str:
    return PurePosixPath(name).stem.lower()


@dataclass(frozen=True)
class Picture:
    """A picture gathered at Run: in the store already (``file``), or from an archive, to keep
    (``data``, once the Run is accepted)."""

    caption: str
    file: FileRef | None = None
    data: bytes = b""
    content_type: str = ""
    extension: str = ""


@dataclass
class TrainingSets:
    uploads: UploadStore
    files: FileStore
    image_limits: ImageLimits
    url_allowlist: Allowlist
    archive_max_bytes: int
    max_images: int

    def gather(self, project_id: int, asked: TrainingRequest) -> list[Picture]:
        """The pictures to train on, each with its caption (prefix and suffix added);
        :class:`TrainingSetRefused` saying why there are none to train on. Blocks on a fetch."""
        field = "training_folder" if asked.folder else "training_archive"
        if asked.folder:
            pictures = self._from_folder(project_id, asked.folder)
        else:
            pictures = self._from_archive(self._archive(asked.archive))
        if not pictures:
            raise TrainingSetRefused(field, "holds no pictures to train on (PNG, JPEG or WebP, each with an "
                                            "optional .txt caption of the same name)")
        if len(pictures) > self.max_images:
            raise TrainingSetRefused(field, f"holds more than the {self.max_images} pictures a training takes on "
                                            "this server (FLUXHOST_TRAINING_MAX_IMAGES)")
        return [replace(picture, caption=" ".join(
            part for part in (asked.caption_prefix, picture.caption, asked.caption_suffix) if part))
            for picture in pictures]

    def keep(self, pictures: list[Picture]) -> tuple[tuple[TrainingImage, ...], str]:
        """The training set as the work order names it, and the folder an archive's pictures were
        written to (empty for uploads, which stay where they are). The Run was accepted."""
        folder = self.files.new_folder() if any(picture.file is None for picture in pictures) else ""
        kept = []
        try:
            for number, picture in enumerate(pictures):
                file = picture.file
                if file is None:
                    name = f"picture-{number:05d}.{picture.extension}"
                    self.files.save(folder, name, picture.data)
                    file = FileRef(folder=folder, name=name, content_type=picture.content_type, size=len(picture.data))
                kept.append(TrainingImage(file=file, caption=picture.caption))
        except OSError:
            with contextlib.suppress(OSError):  # the store that failed may fail this too; the first error says why
                self.files.clear(folder)
            raise
        return tuple(kept), folder

    def _from_folder(self, project_id: int, folder_id: str) -> list[Picture]:
        if self.uploads.find_folder(project_id, folder_id) is None:
            raise TrainingSetRefused("training_folder", "names no folder of your project (File/FolderCreate)")
        most = 2 * self.max_images + FOLDER_OTHER_FILES  # a caption each, and some notes
        total, found = self.uploads.list(project_id, 0, most, newest_first=False, parent_id=folder_id)
        if total > most:  # read in part, some pictures would lose their captions
            raise TrainingSetRefused("training_folder", f"holds {total} files, more than the {most} a training "
                                     f"reads (up to {self.max_images} pictures, a caption each, and a few more): "
                                     "keep the training set in a folder of its own")
        captions: dict[str, str] = {}
        pictures: list[tuple[str, FileRef]] = []
        for upload in found:
            if upload.content_type == CAPTION_TYPE:
                data = self.files.read(upload.folder, upload.file_name)
                try:
                    captions[_stem(upload.name)] = caption_text(data or b"", upload.name)
                except ValueError as error:
                    raise TrainingSetRefused("training_folder", str(error)) from None
            elif upload.content_type.startswith("image/"):
                pictures.append((upload.name, FileRef(folder=upload.folder, name=upload.file_name,
                                                      content_type=upload.content_type, size=upload.size)))
        return [Picture(captions.get(_stem(name), ""), file=file) for name, file in pictures]

    def _archive(self, source: bytes | str | None) -> bytes:
        if isinstance(source, bytes):
            return source
        url = (source or "").strip()
        own = self.files.find(url)
        if own is not None:
            data = self.files.read(*own)
            if data is None:
                raise TrainingSetRefused("training_archive", "names a file this server no longer has")
            return data
        try:
            return fetch(url, self.url_allowlist, ImageLimits(max_bytes=self.archive_max_bytes, max_pixels=0))
        except ImageRefused as error:
            raise TrainingSetRefused("training_archive", str(error)) from None

    def _from_archive(self, data: bytes) -> list[Picture]:
        if not is_zip(data):
            raise TrainingSetRefused("training_archive", "is not a ZIP archive")
        try:
            members = list(archive_members(data, ARCHIVE_MAX_MEMBERS, self.archive_max_bytes))
            captions = {_stem(name): caption_text(content, name) for name, content in members
                        if name.lower().endswith(CAPTION_SUFFIX)}
        except (ArchiveRefused, ValueError) as error:
            raise TrainingSetRefused("training_archive", str(error)) from None
        pictures = []
        for name, content in members:
            if name.lower().endswith(CAPTION_SUFFIX):
                continue
            try:
                image = decode(content, self.image_limits)
            except ImageRefused:
                continue  # not a picture: skipped, as File/Upload skips it
            pictures.append(Picture(captions.get(_stem(name), ""), data=image.data, content_type=image.content_type,
                                    extension=image.extension))
            if len(pictures) > self.max_images:
                break
        return pictures
