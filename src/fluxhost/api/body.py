"""Request bodies as real clients send them.

Bodies arrive as JSON, multipart form data or URL-encoded forms, and the Content-Type header is
not to be trusted: the hosted API's own curl example sends JSON under
``Content-Type: multipart/form-data`` with no boundary, and its Task/Detail example is not even
valid JSON (``{ "tasktoken": eDcC..., }`` once the shell has eaten the inner quotes). So a body
that looks like an object is read as JSON, then as a YAML flow mapping (which takes unquoted
values and trailing commas; every scalar stays a string), whatever the header says.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import yaml
from starlette.requests import Request

MAX_BODY_BYTES = 1_000_000


class BodyError(ValueError):
    """A body that cannot be read as parameters."""


def parse_object_text(text: str) -> dict[str, Any]:
    """A ``{...}`` body, strict JSON first, then lenient."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader builds only str/list/dict
        except yaml.YAMLError as error:
            raise BodyError("unparseable body") from error
    if not isinstance(value, dict):
        raise BodyError("body is not an object")
    return {str(key): item for key, item in value.items()}


async def read_parameters(request: Request, max_upload_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's parameters as a flat dict, an uploaded file's value being its bytes;
    :class:`BodyError` when unreadable. A multipart body may be up to ``max_upload_bytes`` (files),
    any other up to :data:`MAX_BODY_BYTES`. The body is read whole first (and kept by Starlette),
    so the replay check can digest it afterwards."""
    content_type = request.headers.get("content-type", "").lower()
    multipart = content_type.startswith("multipart/form-data") and "boundary=" in content_type
    limit = max(max_upload_bytes, MAX_BODY_BYTES) if multipart else MAX_BODY_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyError("body too large")
    raw = await request.body()
    if len(raw) > limit:
        raise BodyError("body too large")
    if multipart:
        try:
            form = await request.form()
            return {key: value if isinstance(value, str) else await value.read() for key, value in form.items()}
        except Exception as error:  # malformed multipart: python-multipart's errors vary
            raise BodyError("unparseable multipart body") from error
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise BodyError("body is not UTF-8") from error
    if not text:
        return {}
    if text.startswith("{"):
        return parse_object_text(text)
    if text.startswith("["):
        raise BodyError("body is not an object")
    pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    if not pairs:
        raise BodyError("unparseable body")
    return dict(pairs)
