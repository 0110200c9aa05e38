"""A task's outputs: generated images encoded with their generation parameters embedded as
metadata, kept in the file store; and the small previews progress events carry."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from fluxhost.storage import FileStore
from fluxhost.store.work import NewOutput

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
FILE_EXTENSIONS = {"png": "png", "jpeg": "jpg"}
_EXIF_IMAGE_DESCRIPTION = 0x010E
_EXIF_SOFTWARE = 0x0131
JPEG_QUALITY = 95
PREVIEW_MAX_SIDE = 256


class OutputNotStored(Exception):
    """An image could not be written where outputs go (folder unwritable, disk full...)."""


def storage_problem(error: Exception) -> str:
    """What went wrong with the file store, in words (an OSError's own, without the path)."""
    return (error.strerror if isinstance(error, OSError) and error.strerror else str(error)) or type(error).__name__


def store_images(files: FileStore, folder: str, images: Sequence[Image.Image], output_format: str,
                 metadata: dict[str, Any], saved: list[NewOutput]) -> None:
    """Encode and keep ``images`` in ``folder`` as ``0.png``, ``1.png``... (image ``i`` records seed
    ``metadata["seed"] + i``), each appended to ``saved`` once written: what to remove if the run
    ends without them. :class:`OutputNotStored` when the store refuses one."""
    for index, image in enumerate(images):
        data = encode(image, output_format, {**metadata, "seed": metadata["seed"] + index})
        name = f"{index}.{FILE_EXTENSIONS[output_format]}"
        try:
            files.save(folder, name, data)
        except Exception as error:  # a full or unwritable disk, an unreachable bucket...
            raise OutputNotStored(f"the image could not be stored ({storage_problem(error)}); "
                                  "nothing is kept of this run") from error
        saved.append(NewOutput(name, CONTENT_TYPES[output_format], len(data), folder))


def preview_data_url(image: Image.Image) -> str:
    """A step preview as a small JPEG data URL, for progress events."""
    small = image.convert("RGB")
    small.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def encode(image: Image.Image, output_format: str, metadata: dict[str, Any]) -> bytes:
    """PNG with a ``parameters`` text chunk, or JPEG with the same JSON as the EXIF description."""
    described = json.dumps(metadata, sort_keys=True, ensure_ascii=False)
    buffer = io.BytesIO()
    if output_format == "png":
        info = PngInfo()
        info.add_text("parameters", described)
        info.add_text("Software", "fluxhost")
        image.save(buffer, format="PNG", pnginfo=info)
    elif output_format == "jpeg":
        exif = Image.Exif()
        exif[_EXIF_IMAGE_DESCRIPTION] = described
        exif[_EXIF_SOFTWARE] = "fluxhost"
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buffer.getvalue()


def embedded_parameters(data: bytes) -> dict[str, Any]:
    """The metadata :func:`encode` embedded, read back from the file's bytes."""
    image = Image.open(io.BytesIO(data))
    if image.format == "PNG":
        return json.loads(image.text["parameters"])
    return json.loads(image.getexif()[_EXIF_IMAGE_DESCRIPTION])
