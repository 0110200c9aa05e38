"""Request bodies as real clients send them.

Bodies arrive as JSON, multipart form data or URL-encoded forms, and the Content-Type header is
not to be trusted: the hosted API's own curl example sends JSON under
``Content-Type: multipart/form-data`` with no boundary, and its Task/Detail example is not even
valid JSON (``{ "tasktoken": eDcC..., }`` once the shell has eaten the inner quotes). So a body
that looks like an object is read as JSON, then as a YAML flow mapping (which takes unquoted
values and trailing commas; every scalar stays a string), whatever the header says.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import yaml
from pydantic import BaseModel, ConfigDict, model_validator
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# What a hand-typed body that is not JSON may weigh: the lenient parser runs on the event loop,
# before the key is checked. libyaml's loader where installed: the pure-Python one takes seconds
# on a few kilobytes of deep nesting.
LENIENT_MAX_CHARS = 16_384
LENIENT_LOADER = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
UPLOAD_OVERHEAD_BYTES = 1_000_000  # multipart framing and the other fields around a file


class BodyError(ValueError):
    """A body that cannot be read as parameters."""


class NonFiniteNumber(BodyError):
    """A JSON body holding NaN, Infinity or a number past a double's range (1e400): Python reads
    them, but no JSON encoder writes them back, so a task that stored one could never be shown."""

    def __init__(self, literal: str):
        super().__init__(f"{literal} is not a finite number")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise NonFiniteNumber(literal)
    return number


def _no_constant(literal: str) -> float:
    raise NonFiniteNumber(literal)


def loads_finite(text: str) -> Any:
    """``json.loads``, refusing non-finite numbers (:class:`NonFiniteNumber`)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


class UploadedFile(bytes):
    """A multipart file's bytes, with the file name its client sent: a label to show (once made
    fit to), never a path. Still ``bytes``, so whatever takes a file's bytes takes it."""

    filename: str

    def __new__(cls, data: bytes, filename: str) -> UploadedFile:
        uploaded = super().__new__(cls, data)
        uploaded.filename = filename
        return uploaded


class BodyRefused(Exception):
    """A body the server stops reading; ``status_code``: the HTTP status that says why, ``headers``:
    what the answer must carry besides."""

    status_code: int
    headers: dict[str, str] = {}


class BodyTooLarge(BodyRefused):
    status_code = 413

    def __init__(self, limit: int):
        super().__init__(f"The request body is too large: at most {limit} bytes.")
        self.limit = limit


class BodyTooSlow(BodyRefused):
    """A body that did not arrive whole within the deadline: a client trickling one in would hold
    its connection (and the memory of what came) for as long as it liked."""

    status_code = 408
    headers = {"Connection": "close"}  # the rest of the body may still be on its way: the connection ends

    def __init__(self, seconds: float):
        super().__init__(f"The request body took too long: it must arrive within {seconds:g} s.")


def parse_object_text(text: str) -> dict[str, Any]:
    """A ``{...}`` body, strict JSON first, then lenient (small bodies only: the lenient parser is
    slow, and what needs it is a hand-typed line). JSON with a non-finite number is refused, not
    read leniently: it is JSON, and what it says cannot be kept."""
    try:
        value = loads_finite(text)
    except NonFiniteNumber:
        raise
    except RecursionError as error:
        raise BodyError("body nested too deeply") from error
    except ValueError:
        if len(text) > LENIENT_MAX_CHARS:
            raise BodyError("unparseable body") from None
        try:
            if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=LENIENT_LOADER)):
                # each alias repeats what its anchor names: a few hundred bytes would build billions of items
                raise BodyError("unparseable body: aliases are not taken")
            value = yaml.load(text, Loader=LENIENT_LOADER)  # noqa: S506 - builds only str/list/dict
        except (yaml.YAMLError, RecursionError) as error:
            raise BodyError("unparseable body") from error
    if not isinstance(value, dict):
        raise BodyError("body is not an object")
    return {str(key): item for key, item in value.items()}


def storable(value: Any) -> bool:
    """Whether every text in ``value`` can be stored and sent back: no NUL character (PostgreSQL
    refuses it) and no lone surrogate (a JSON escape such as ``\\ud800``, which no encoder takes)."""
    pending = [value]  # walked without recursion: a body may nest thousands deep
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return False
        elif isinstance(item, dict):
            pending += item.keys()
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    return True


async def read_body(request: Request, limit: int, seconds: float | None = None) -> bytes:
    """The whole body, read as it streams in and refused (:class:`BodyTooLarge`) as soon as it is
    declared or grows past ``limit``: an oversized body is never held in memory; and refused
    (:class:`BodyTooSlow`) when it is not all there after ``seconds`` (None: no deadline)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTooSlow(seconds) from None
    return b"".join(chunks)


def is_multipart(headers: Headers) -> bool:
    content_type = headers.get("content-type", "").lower()
    return content_type.startswith("multipart/form-data") and "boundary=" in content_type


async def parse_parameters(raw: bytes, headers: Headers) -> dict[str, Any]:
    """A body's parameters as a flat dict, an uploaded file's value being its bytes (an
    :class:`UploadedFile`);
    :class:`BodyError` when unreadable or holding text that cannot be stored."""
    parameters = await _parameters(raw, headers)
    if not storable(parameters):
        raise BodyError("body holds a NUL character or a lone surrogate")
    return parameters


async def _parameters(raw: bytes, headers: Headers) -> dict[str, Any]:
    if is_multipart(headers):
        async def body() -> AsyncIterator[bytes]:
            yield raw

        try:
            form = await MultiPartParser(headers, body()).parse()
            return {key: value if isinstance(value, str) else UploadedFile(await value.read(), value.filename or "")
                    for key, value in form.items()}
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


class StorableText(BaseModel):
    """A request model (a door's body) whose values can be stored and sent back: refused, in the
    door's validation shape, when its text holds a NUL character or a lone surrogate, or a number
    is not finite (NaN, Infinity, also written as text)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="after")
    def _storable(self) -> StorableText:
        if not storable(self.model_dump()):
            raise ValueError("text must not hold NUL characters or lone surrogates")
        return self


class LimitedBody:
    """ASGI middleware for a door whose framework reads bodies itself (FastAPI's models): the body
    is read first, refused with the door's own answer (``refuse(error)``: 413 or 408) as soon as
    it is declared or streams past ``limit``, or when it is not all there after ``seconds``, and
    otherwise handed on whole."""

    def __init__(self, app: ASGIApp, limit: int, seconds: float, refuse: Callable[[BodyRefused], Response]):
        self.app = app
        self.limit = limit
        self.seconds = seconds
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self.refuse(BodyTooLarge(self.limit))(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.seconds):
                body, more = await self._read(receive)
        except TimeoutError:
            await self.refuse(BodyTooSlow(self.seconds))(scope, receive, send)
            return
        if body is None:
            await self.app(scope, receive, send)  # the client left: the app sees it as it would
            return
        if more or len(body) > self.limit:
            await self.refuse(BodyTooLarge(self.limit))(scope, receive, send)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> tuple[bytes | None, bool]:
        """The body until its end or past the limit, and whether more was coming; None when the
        client left."""
        body, more = b"", True
        while more and len(body) <= self.limit:
            message = await receive()
            if message["type"] != "http.request":
                return None, False
            body += message.get("body", b"")
            more = message.get("more_body", False)
        return body, more
