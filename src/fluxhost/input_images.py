"""Input images as clients send them: uploaded bytes or a URL, checked and made ready to edit.

Only PNG, JPEG and WebP are taken, within a byte and a pixel limit; the pixel count is checked
from the header, before anything is decoded, so a decompression bomb costs nothing. A URL is
fetched through the SSRF guard (public addresses only unless allow-listed, every redirect checked
again), with bounded time and size. The image is turned upright by its EXIF orientation and any
transparency is flattened onto white.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from fluxhost.urlguard import Allowlist, UrlRefused, check_public_url, tls_context

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# Phones save JPEGs with more than one picture in them (a depth map, a preview): Pillow calls them
# MPO. Every JPEG reader shows the first, and so do we.
SAME_FORMAT = {"MPO": "JPEG"}
MAX_REDIRECTS = 3
WIDEST_SHAPE = 7 / 3  # 21:9, the widest aspect ratio the tools offer (FLUX.1 Kontext keeps 3:7 to 7:3)


class ImageRefused(ValueError):
    """An input image the server will not take; ``str(error)`` says why, as a predicate of the
    input ("is larger than 20 MB"): each door names the input its own way."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    timeout_seconds: float = 15.0


DEFAULT_LIMITS = ImageLimits(20_000_000, 25_000_000)


@dataclass(frozen=True)
class InputImage:
    """A checked input: the file as sent, its format, and the upright RGB image."""

    data: bytes
    format: str
    image: Image.Image

    @property
    def content_type(self) -> str:
        return FORMATS[self.format]

    @property
    def extension(self) -> str:
        return {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[self.format]


def decode(data: bytes, limits: ImageLimits) -> InputImage:
    if len(data) > limits.max_bytes:
        raise ImageRefused(f"is larger than {limits.max_bytes // 1_000_000} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageRefused(f"has {width}x{height} pixels, more than the "
                                   f"{limits.max_pixels} this server takes")
            if SAME_FORMAT.get(image.format, image.format) not in FORMATS:
                raise ImageRefused("must be a PNG, JPEG or WebP image")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard, past Image.MAX_IMAGE_PIXELS, refuses before the size can be read.
        raise ImageRefused(f"has more pixels than the {_pixel_limit(limits)} this server takes") from None
    except UnidentifiedImageError:
        raise ImageRefused("must be a PNG, JPEG or WebP image") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageRefused):
            raise
        raise ImageRefused("is a truncated or damaged image") from None
    upright = ImageOps.exif_transpose(image)
    if upright.mode.startswith("I"):  # 16-bit greyscale (a PNG's): converted as it is, all past 255 is white
        upright = upright.convert("I").point(lambda value: value / 257).convert("L")
    if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:  # an alpha channel, or a colour key
        rgba = upright.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        upright = flat
    return InputImage(data, SAME_FORMAT.get(image.format, image.format), upright.convert("RGB"))


def _pixel_limit(limits: ImageLimits) -> int:
    """The pixels an image may have here: the setting, or Pillow's guard where it is lower."""
    return min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels)


def fetch(url: str, allowlist: Allowlist, limits: ImageLimits) -> bytes:
    """The body at ``url`` (following at most a few redirects, each checked like the URL itself)."""
    timeout = httpx.Timeout(limits.timeout_seconds, connect=min(5.0, limits.timeout_seconds))
    with httpx.Client(timeout=timeout, follow_redirects=False, verify=tls_context(),
                      headers={"user-agent": "fluxhost-input-fetcher"}) as client:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = check_public_url(url, allowlist).request()
            except UrlRefused as error:
                raise ImageRefused(str(error)) from None
            try:
                with client.stream("GET", target["url"], headers=target["headers"],
                                   extensions=target["extensions"]) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise ImageRefused(f"could not be fetched: the server "
                                           f"answered HTTP {response.status_code}")
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > limits.max_bytes:
                        raise ImageRefused(f"is larger than "
                                           f"{limits.max_bytes // 1_000_000} MB")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > limits.max_bytes:
                            raise ImageRefused(f"is larger than "
                                               f"{limits.max_bytes // 1_000_000} MB")
                    return bytes(body)
            except httpx.TimeoutException:
                raise ImageRefused(f"could not be fetched in "
                                   f"{limits.timeout_seconds:g} s") from None
            except httpx.HTTPError as error:
                raise ImageRefused(f"could not be fetched "
                                   f"({type(error).__name__})") from None
    raise ImageRefused(f"redirects more than {MAX_REDIRECTS} times")


def size_like(image: Image.Image, pixels: int = 1024 * 1024, multiple: int = 32) -> tuple[int, int]:
    """About ``pixels`` pixels in the image's aspect ratio, or the nearest the tools draw (at most
    :data:`WIDEST_SHAPE` either way: a 1x25,000,000 image would ask for 32x5,120,000), each side a
    multiple of ``multiple``."""
    width, height = image.size
    shape = min(max(width / height, 1 / WIDEST_SHAPE), WIDEST_SHAPE)
    return (max(multiple, round((pixels * shape) ** 0.5 / multiple) * multiple),
            max(multiple, round((pixels / shape) ** 0.5 / multiple) * multiple))
