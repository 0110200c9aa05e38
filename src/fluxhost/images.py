"""Encoding generated images, with the generation parameters embedded as metadata."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
FILE_EXTENSIONS = {"png": "png", "jpeg": "jpg"}
_EXIF_IMAGE_DESCRIPTION = 0x010E
_EXIF_SOFTWARE = 0x0131
JPEG_QUALITY = 95


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
