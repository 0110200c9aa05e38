"""Fuzzing the HTTP API: whatever a client sends, the server answers in the protocol's shape
(``{"result": bool, "errors": [{"code": int, "message": str}], ...}``), never with a 5xx and never
with a stack trace or an exception's repr.

One live server (uvicorn on a loopback port, the real app) serves every example of the module. It
has no worker (``worker_concurrency=0``) and the bench engine, so an accepted Run only queues a
task. Every example gets a project of its own (a key-only key and a signature key), so what one
example stores cannot change what the next one sees, and a failure shrinks to the request that
caused it. An accepted Run is read back (Task/Detail by id and token, Task/List): what a Run
stores must render.

Searches are derandomized, so runs are reproducible; ``FLUXHOST_FUZZ_SCALE`` multiplies every
test's example count (e.g. 20 for a long local search). ``test_requests_that_broke_the_server``
keeps, one case each, the requests these searches found breaking the server.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxhost.client import NonceSource
from fluxhost.settings import ModelSettings, Settings
from fluxhost.signing import KeyMode, sign_request
from fluxhost.store.keys import KeyStore, NewKey
from tests.helpers import SLUG, LiveServer, free_port, fresh_postgres_database

EDIT_SLUG = "black-forest-labs/flux-kontext-pro"  # an edit model: inputImage, inputImageUrl
SCALE = float(os.environ.get("FLUXHOST_FUZZ_SCALE", "1"))
MAX_BODY_BYTES = 1_000_000  # what the server reads of a body that is not a file upload


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,  # derandomized: nothing to replay, and nothing written under the working tree
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
    )


# --- the protocol's words -------------------------------------------------------------------------

UNKNOWN_KEY = "Project authorization is not founded."
SIGNATURE_REQUIRED = "Project requires signature authentication. x-signature and x-nonce headers are required."
BAD_SIGNATURE = "Project authorization is not valid."
AUTH_MESSAGES = {UNKNOWN_KEY, SIGNATURE_REQUIRED, BAD_SIGNATURE}

RUN_ENDPOINTS = (f"Run/{SLUG}", "Run/black-forest-labs/flux-pro-1-1", f"Run/{EDIT_SLUG}", "Run/nobody/nothing")
TASK_ENDPOINTS = ("Task/Detail", "Task/Cancel", "Task/Kill", "Task/InputOutputDelete")
LIST_ENDPOINTS = ("Task/List", "Tool/List", "Tool/Detail", "Tool/Explore")
FILE_ENDPOINTS = ("File/List", "File/Delete", "File/FolderCreate")
ENDPOINTS = (*RUN_ENDPOINTS, *TASK_ENDPOINTS, *LIST_ENDPOINTS, *FILE_ENDPOINTS, "File/Upload")

# What a stack trace or a Python exception's repr looks like in text.
STACK_TEXT = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]*\", line \d+|\b[A-Z]\w*(?:Error|Exception|Warning): "
    r"|<[\w.]+ object at 0x[0-9a-f]+>|<class '[\w.]+'>"
)


# --- the server -----------------------------------------------------------------------------------

class ServerErrors(logging.Handler):
    """Exceptions the server logs (the app's unexpected-error handler, uvicorn's ASGI errors)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)

    def take(self) -> str:
        """The exceptions logged since the last call, as text ("" when none)."""
        records, self.records = self.records, []
        return "\n".join(f"{record.getMessage()}: {record.exc_info[0].__name__}: {record.exc_info[1]}"[:2000]
                         for record in records if record.exc_info)


class Project:
    """A project of its own for one example, with a key-only key and a signature key, each made
    when first used."""

    def __init__(self, keys: KeyStore):
        self._keys = keys
        self._name: str | None = None

    def _key(self, mode: KeyMode) -> NewKey:
        key = self._keys.create(mode, project=self._name)
        self._name = key.project
        return key

    @cached_property
    def key_only(self) -> NewKey:
        return self._key(KeyMode.KEY_ONLY)

    @cached_property
    def signed(self) -> NewKey:
        return self._key(KeyMode.SIGNATURE)


def header_bytes(value: str | bytes) -> bytes:
    """A header value as it can go on the wire: latin-1 (else UTF-8) bytes, without the control
    characters HTTP forbids nor spaces around it (the client would refuse to send them)."""
    if isinstance(value, str):
        try:
            value = value.encode("latin-1")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "surrogatepass")
    return bytes(byte for byte in value if byte == 9 or 32 <= byte != 127).strip(b" \t")


class Api:
    """The live server, spoken to over HTTP with a fresh connection per request (a server that
    drops a connection after an error must not fail the next example instead)."""

    def __init__(self, live: LiveServer, errors: ServerErrors):
        self.live = live
        self.errors = errors
        self.http = httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))
        self._nonces = NonceSource()  # timestamps: inside the nonce window however long the run

    def project(self) -> Project:
        return Project(self.live.service.keys)

    def nonce(self) -> str:
        return self._nonces.next()

    def auth(self, project: Project, signed: bool) -> dict[str, str]:
        if not signed:
            return {"x-api-key": project.key_only.api_key}
        key, nonce = project.signed, self.nonce()
        return {"x-api-key": key.api_key, "x-nonce": nonce,
                "x-signature": sign_request(key.api_key, key.api_secret, nonce)}

    def send(self, path: str, content: bytes = b"", headers: dict[str, Any] | None = None,
             method: str = "POST") -> httpx.Response:
        """One request, and what every answer must be: no 5xx, no stack text, no exception logged
        by the server."""
        self.errors.take()
        headers = {name: header_bytes(value) for name, value in (headers or {}).items()}
        shown = f"{method} {path} headers={headers!r} body={bytes(content[:300])!r}"
        shown += f"... ({len(content)} bytes)" if len(content) > 300 else ""
        try:
            response = self.http.request(method, self.live.base_url + path, content=content, headers=headers)
        except httpx.TransportError as error:
            time.sleep(0.05)
            raise AssertionError(f"{shown}\n-> connection failed ({error!r})\nserver: {self.errors.take()}") from None
        if response.status_code >= 500:
            time.sleep(0.05)  # let the server's log of the exception land
        logged = self.errors.take()
        shown += f"\n-> {response.status_code} {response.text[:500]}"
        assert response.status_code < 500, f"{shown}\nserver: {logged}"
        assert not logged, f"{shown}\nthe server logged an exception: {logged}"
        if not path.startswith("/files/"):
            assert not STACK_TEXT.search(response.text), f"stack text in the answer: {shown}"
        return response

    def call(self, endpoint: str, content: bytes = b"", headers: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST /v1/<endpoint>: 200 or 401 (413 for a body over the limit), in the protocol's shape."""
        response = self.send(f"/v1/{endpoint}", content, headers)
        answer = protocol_answer(response)
        allowed = {200, 401} | ({413} if len(content) > MAX_BODY_BYTES else set())
        assert response.status_code in allowed, f"{endpoint}: {response.status_code} {answer}"
        if response.status_code == 401:
            assert answer["errors"][0]["message"] in AUTH_MESSAGES, answer
        return answer

    def post_json(self, endpoint: str, body: Any, headers: dict[str, Any]) -> dict[str, Any]:
        return self.call(endpoint, json.dumps(body).encode(), {**headers, "content-type": "application/json"})


def protocol_answer(response: httpx.Response) -> dict[str, Any]:
    """The answer as JSON, checked against the protocol's shape."""
    where = f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text[:300]!r}"
    assert response.headers.get("content-type", "").startswith("application/json"), where
    try:
        answer = response.json()
    except ValueError:
        raise AssertionError(f"not JSON: {where}") from None
    assert isinstance(answer, dict), where
    assert isinstance(answer.get("result"), bool), where
    errors = answer.get("errors")
    assert isinstance(errors, list), where
    for error in errors:
        assert isinstance(error, dict) and set(error) >= {"code", "message"}, where
        assert isinstance(error["code"], int) and not isinstance(error["code"], bool), where
        assert isinstance(error["message"], str) and error["message"].strip(), where
    assert bool(errors) is not answer["result"], f"result and errors disagree: {where}"
    if response.status_code != 200:
        assert answer["result"] is False, where
    return answer


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    errors = ServerErrors()
    loggers = [logging.getLogger(name) for name in ("fluxhost", "uvicorn.error", "uvicorn.asgi")]
    with ExitStack() as stack:
        postgres = os.environ.get("FLUXHOST_TEST_POSTGRES")
        database_url = stack.enter_context(fresh_postgres_database(postgres)) if postgres else None
        models = {
            SLUG: ModelSettings(steps=1, max_sequence_length=32),
            EDIT_SLUG: ModelSettings(steps=1, max_sequence_length=32, kind="edit"),
        }
        server_settings = Settings(
            data_dir=tmp_path_factory.mktemp("fuzz") / "data", database_url=database_url, host="127.0.0.1",
            port=free_port(), worker_concurrency=0, worker_process=False, engine="bench", models=models,
            input_timeout_seconds=2, callback_timeout_seconds=2,
            auth_failure_limit_per_address=0, auth_failure_limit_per_key=0,  # it fails on purpose, from one address
        )
        live = stack.enter_context(LiveServer(server_settings))
        for logger in loggers:
            logger.addHandler(errors)
            stack.callback(logger.removeHandler, errors)
        api = Api(live, errors)
        stack.callback(api.http.close)
        yield api


# --- values ---------------------------------------------------------------------------------------

class ShownByName:
    """A value too long to print that strategies and reports show by its name (a repr of
    kilobytes slows Hypothesis down and buries the report)."""

    name: str

    def __new__(cls, name: str, value: str | bytes):
        shown = super().__new__(cls, value)
        shown.name = name
        return shown

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Long(ShownByName, str):
    """A long string."""


DIGITS_5001 = Long("5001 digits", "1" + "0" * 5000)
X_10000 = Long("10000 x", "x" * 10_000)
X_10001 = Long("10001 x", "x" * 10_001)

PARAMETER_NAMES = (
    "prompt", "promptUpsampling", "safetyTolerance", "aspectRatio", "seed", "outputFormat", "steps", "guidance",
    "strength", "width", "height", "callbackUrl", "callbackurl", "inputImage", "inputImageUrl", "taskid",
    "tasktoken", "socketaccesstoken", "start", "limit", "order", "sort", "search", "categories", "slugowner",
    "slugproject", "hideworkflows", "summary", "type", "modelName", "file", "fileid",
)
URL_PARAMETERS = ("callbackUrl", "callbackurl", "inputImageUrl", "inputImage")

# The strings most likely to break something, drawn often.
NASTY_STRINGS = (
    "\ud800", "a\udfffb", "\x00", "a\x00b", "²", "١٢", "𝟏", "9" * 20, DIGITS_5001, "-1", " ", "",
    "\U0010ffff", "\u202e", "%", "\\",
)
ODD_STRINGS = (
    "0", "-0", "+5", " 7 ", "42", "4294967295", "4294967296", "1e3", "1.0", "1.5", ".5", "0x10", "1_000", "Ⅻ",
    "½", "NaN", "inf", "-Infinity", "true", "false", "True", "yes", "null", "None", "{}", "[]", "[1", '["flux"]',
    '"flux"', "{a: b}", "16:9", "7:3", "16:09", " 1:1 ", "0:0", "png", "PNG", "gif", "jpeg ", "desc", "ASC",
    "sideways", "id", "createtime", "status", "flux-pro-1.1", "black-forest-labs", "%00", "%ff", "\ufeff",
    "é" * 10, "🦊" * 5, X_10001, "' OR '1'='1", "../../etc/passwd", "<b>", "${jndi:ldap://x}", "%s%n",
    '"', "\r\n", "  \t\n",
)

nasty = st.sampled_from(NASTY_STRINGS)
# Text with lone surrogates too: JSON carries them (escaped).
texts = nasty | st.sampled_from(ODD_STRINGS) | st.text(st.characters(exclude_categories=()), max_size=40)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**31, 2**32, 2**63, -(2**63) - 1, 10**30, -(10**30), 10**400])
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(texts, inner, max_size=4), max_leaves=8)

# URLs whose host needs no name lookup and is not public: an example never waits on DNS or a network.
url_hosts = st.sampled_from([
    "127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "10.0.0.7", "169.254.169.254", "192.0.2.1",
    "0", "2130706433", "0x7f.1", "[", "[::1", "]", "[v1.x]", "a:b@127.0.0.1", "127.0.0.1:99999", "127.0.0.1:-1",
    "127.0.0.1:x", "", "%31%32%37.0.0.1", "[fe80::1%25eth0]", "127.0.0.1\x00.x", "\ud800",
])
url_values = st.builds(
    lambda scheme, host, path: f"{scheme}{host}{path}",
    st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "file://", "javascript:", "//", "", "http:/"]),
    url_hosts,
    st.sampled_from(["", "/", "/hook", "/a.png", "/files/" + "0" * 64 + "/0.png", "/%zz", "/\u00e9", "?q=1#x",
                     Long("2101-character path", "/" + "a" * 2100)]),
) | st.sampled_from(["", " ", "x", "\ud800", "You can provide a callback URL", "1"])


def png(width: int, height: int, *, truncate: bool = False) -> bytes:
    """A PNG of that size (its header may claim more pixels than it has: a bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(min(height, 8))) if width <= 64 else b""
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return data[: len(data) // 2] if truncate else data


def gif() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, "GIF")
    return out.getvalue()


FILE_CONTENTS = st.sampled_from([
    b"", b"\x00", b"\x89PNG\r\n\x1a\n", png(8, 8), png(8, 8, truncate=True), png(60_000, 60_000),
    png(1, 100_000), gif(), b"GIF89a" + b"\x00" * 20, b"\xff\xd8\xff\xe0" + b"\x00" * 30, b"RIFF\x00\x00\x00\x00WEBP",
    b"%PDF-1.4", "é".encode(), b"\xff\xfe\xfd",
]) | st.binary(max_size=64)


def json_text(value: Any, ascii_only: bool = True) -> bytes:
    """``value`` as JSON text (NaN and Infinity as Python writes them); lone surrogates escaped, or
    written raw (then the bytes are not UTF-8)."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


def form_text(value: Any) -> str:
    """How a form carries a value: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, allow_nan=True)


@st.composite
def parameter_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A body's parameters: known names and odd ones, each with a value of any JSON kind (URLs for
    the URL parameters)."""
    keys = draw(st.lists(st.sampled_from(PARAMETER_NAMES) | texts, max_size=6, unique=True))
    return {key: draw(url_values if key in URL_PARAMETERS else json_values) for key in keys}


class Huge(ShownByName, bytes):
    """A body too big to print."""


# Bodies large or deep enough to reach a parser's limits (none slow to parse on purpose).
HUGE_BODIES = {
    name: Huge(name, data) for name, data in {
        "JSON arrays 100000 deep": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "JSON objects 50000 deep": b'{"a": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
        "lenient arrays 500 deep": b"{a: " + b"[" * 500 + b"]" * 500 + b"}",
        "lenient mappings 5000 deep": b"{a: " + b"{a: " * 5_000 + b"b" + b"}" * 5_001,
        "a prompt of 999000 characters": b'{"prompt": "' + b"x" * 999_000 + b'"}',
        "a body over the limit": b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}',
        "a seed of 5001 digits": b'{"prompt": "x", "seed": 1' + b"0" * 5_000 + b"}",
        "a taskid of 5001 digits": b'{"taskid": 1' + b"0" * 5_000 + b"}",
        "a start of 5001 digits": b'{"start": 1' + b"0" * 5_000 + b"}",
        "20000 keys": json.dumps({f"k{i}": i for i in range(20_000)}).encode(),
        "300000 percent signs": b"a=" + b"%" * 300_000,
        "500000 ampersands": b"&" * 500_000,
        "300000 percent escapes": b"prompt=" + b"%41" * 300_000,
        "an object of 999990 spaces": b"{" + b" " * 999_990 + b"}",
    }.items()
}


def readable_task(api: Api, project: Project, run: dict[str, Any]) -> None:
    """A task a Run accepted reads back by id, by token and in the list, in the protocol's shape."""
    auth = api.auth(project, signed=False)
    for body in ({"taskid": run["taskid"]}, {"tasktoken": run["socketaccesstoken"]}):
        detail = api.post_json("Task/Detail", body, auth)
        assert detail["result"] is True, detail
        assert_task_shape(detail["tasklist"][0])
    listed = api.post_json("Task/List", {"limit": 1000}, auth)
    assert listed["result"] is True and any(task["id"] == run["taskid"] for task in listed["tasklist"]), listed


def assert_task_shape(task: dict[str, Any]) -> None:
    """Every value of a task object is a string, but for its lists and the parameters as sent."""
    for name, value in task.items():
        if name not in ("parameters", "outputs", "inputs", "callbackattempts"):
            assert isinstance(value, str), (name, value)


# --- (1) bodies: JSON, lenient, multipart, URL-encoded, raw bytes ---------------------------------

@st.composite
def json_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    kind = draw(st.sampled_from(["object", "object", "object", "any", "huge", "lenient"]))
    if kind == "huge":
        body = draw(st.sampled_from(list(HUGE_BODIES.values())))
    elif kind == "lenient":  # the YAML fallback: unquoted values, trailing commas, odd flow syntax
        pairs = draw(st.lists(st.tuples(st.sampled_from(PARAMETER_NAMES) | texts, texts), max_size=4))
        junk = draw(st.sampled_from(["", ",", ", }", "&a", "*a", "!!python/object:os.system", "? ", "[", "'", "\t"]))
        body = ("{ " + ", ".join(f"{k}: {v}" for k, v in pairs) + junk + " }").encode("utf-8", "surrogatepass")
    else:
        value = draw(parameter_dicts()) if kind == "object" else draw(json_values)
        body = json_text(value, draw(st.booleans()))
    content_type = draw(st.sampled_from([
        "application/json", "application/json; charset=utf-8", "multipart/form-data", None, "text/plain",
        "application/x-www-form-urlencoded",
    ]))
    return body, content_type


def posted(api: Api, endpoint: str, content: bytes, content_type: str | None, signed: bool) -> None:
    """Send a body as a project's client would, resend it (a replay) when small, and read back a
    task it made."""
    project = api.project()
    headers = api.auth(project, signed)
    if content_type is not None:
        headers["content-type"] = content_type
    answer = api.call(endpoint, content, headers)
    if len(content) < 10_000:
        api.call(endpoint, content, headers)
    if answer["result"] and endpoint.startswith("Run/"):
        readable_task(api, project, answer)


@fuzz(150)
@given(endpoint=st.sampled_from(ENDPOINTS), body=json_bodies(), signed=st.booleans())
def test_json_bodies_on_every_endpoint(api, endpoint, body, signed):
    posted(api, endpoint, *body, signed)


BOUNDARY_CHARS = st.characters(codec="ascii", categories=("L", "N"), include_characters="'()+_,-./:=? ")


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=72).map(str.strip).filter(bool)
                    | st.sampled_from(["x", "-", "--", "a" * 200, "é", '"q"', "a;b", "a\tb"]))
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(PARAMETER_NAMES) | texts)
        if draw(st.booleans()):
            value = draw(FILE_CONTENTS)
            filename = draw(st.sampled_from(["a.png", "", "x", "é.png", '"', "../../a"]))
            disposition = f'form-data; name="{name}"; filename="{filename}"'
            extra = draw(st.sampled_from(["", "Content-Type: image/png\r\n", "Content-Type: \r\n",
                                          "Content-Type: text/plain; charset=nope\r\n"]))
        else:
            text = form_text(draw(url_values if name in URL_PARAMETERS else json_values))
            encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"]))
            value = text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")
            encoded_name = quote(name, errors="surrogatepass")
            disposition = draw(st.sampled_from([f'form-data; name="{name}"', f"form-data; name={name}", "form-data",
                                                f"form-data; name*=UTF-8''{encoded_name}",
                                                f'attachment; name="{name}"']))
            extra = draw(st.sampled_from(["", "Content-Type: text/plain; charset=latin-1\r\n",
                                          "Content-Transfer-Encoding: base64\r\n"]))
        head = f"Content-Disposition: {disposition}\r\n{extra}\r\n".encode("utf-8", "surrogatepass")
        parts.append(b"--" + boundary.encode() + b"\r\n" + head + value + b"\r\n")
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    framing = draw(st.sampled_from(["good", "good", "no boundary", "other boundary", "truncated", "no end",
                                    "lf only", "empty boundary", "quoted", "preamble"]))
    content_type = f"multipart/form-data; boundary={boundary}"
    if framing == "no boundary":
        content_type = "multipart/form-data"
    elif framing == "other boundary":
        content_type = "multipart/form-data; boundary=not-the-one"
    elif framing == "truncated":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif framing == "no end":
        body = b"".join(parts)
    elif framing == "lf only":
        body = body.replace(b"\r\n", b"\n")
    elif framing == "empty boundary":
        content_type = "multipart/form-data; boundary="
    elif framing == "quoted":
        content_type = f'multipart/form-data; boundary="{boundary}"; charset={draw(texts)}'
    elif framing == "preamble":
        body = b"preamble \xff\r\n" + body + b"epilogue"
    if draw(st.booleans()):
        content_type = content_type.upper()
    return body, content_type


@fuzz(120)
@given(endpoint=st.sampled_from(ENDPOINTS), body=multipart_bodies(), signed=st.booleans())
def test_multipart_bodies_on_every_endpoint(api, endpoint, body, signed):
    posted(api, endpoint, *body, signed)


PERCENT_TOKENS = st.sampled_from(["%", "%%", "%z", "%zz", "%f", "%ff", "%FF%FE", "%c3%28", "%e2%82", "%00", "%0a",
                                  "%25", "%u00e9", "+", "%2B", "=", "==", "&", ";", "%26", "%3D", "%ed%a0%80",
                                  "%C3%A9", "\xe9", "\x00", "%B2", "%C2%B2"])


@st.composite
def urlencoded_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    def piece(pool: st.SearchStrategy[str]) -> str:
        return "".join(draw(st.lists(pool | PERCENT_TOKENS | texts.map(lambda t: quote(t, errors="surrogatepass")),
                                     max_size=4)))

    pairs = [(piece(st.sampled_from(PARAMETER_NAMES)), piece(nasty | st.sampled_from(ODD_STRINGS)))
             for _ in range(draw(st.integers(0, 5)))]
    separator = draw(st.sampled_from(["&", ";", "&&", "\n"]))
    text = separator.join(f"{key}={value}" if draw(st.booleans()) else key for key, value in pairs)
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"]))
    body = text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")
    content_type = draw(st.sampled_from([
        "application/x-www-form-urlencoded", f"application/x-www-form-urlencoded; charset={encoding}",
        "application/x-www-form-urlencoded; charset=x-unknown", "application/x-www-form-urlencoded; charset=",
        None, "application/json",
    ]))
    return body, content_type


@fuzz(70)
@given(endpoint=st.sampled_from(ENDPOINTS), body=urlencoded_bodies(), signed=st.booleans())
def test_urlencoded_bodies_on_every_endpoint(api, endpoint, body, signed):
    posted(api, endpoint, *body, signed)


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60)
content_types = st.sampled_from([
    "application/json; charset=utf-16", "application/json; charset=does-not-exist", "application/json; charset=",
    "application/json;;;", "text/plain; charset=latin-1", "multipart/form-data; boundary", "multipart/mixed",
    "multipart/form-data; boundary=; charset=utf-8", "multipart/form-data; charset=ebcdic; boundary=x",
    "application/x-www-form-urlencoded; charset=utf-7", "*/*", "", "application/octet-stream", "image/png",
    Long("5000-character boundary", "multipart/form-data; boundary=" + "b" * 5_000),
]) | HEADER_TEXT
raw_bodies = st.binary(max_size=200) | st.sampled_from([
    b"", b" ", b"\n", b"\x00", b"\xff\xfe{\x00}\x00", '{"prompt": "é"}'.encode("utf-16"),
    '{"prompt": "é"}'.encode("latin-1"), b'\xef\xbb\xbf{"prompt": "x"}', b'{"prompt": "\xc3\x28"}',
    b"[1, 2]", b"null", b"42", b'"x"', b"prompt", b"=", b"&", b"{", b"}", b"[", b"{}" * 100,
])


@fuzz(70)
@given(endpoint=st.sampled_from(ENDPOINTS), content=raw_bodies, content_type=st.none() | content_types,
       signed=st.booleans())
def test_raw_bytes_and_odd_content_types(api, endpoint, content, content_type, signed):
    posted(api, endpoint, content, content_type, signed)


# --- (2) keys, nonces and signatures --------------------------------------------------------------

@dataclass(frozen=True)
class Credential:
    """How one authentication header of an example is made, once its project's keys exist."""

    kind: str
    text: str = ""


header_values = (
    st.sampled_from(["", " ", "\t", "0", "-1", "00000", "1" * 40, "1" * 41, "9" * 13, "1" * 10, "１２３", "0x1f",
                     "\xe9\xff", Long("4000 a", "a" * 4_000), "null", "undefined", "Bearer x", "²"])
    | HEADER_TEXT
    | st.text("0123456789", min_size=1, max_size=20)
)
api_keys = st.sampled_from([Credential("key-only"), Credential("signed"), Credential("absent")]) \
    | st.builds(Credential, st.just("text"), header_values)
nonces = st.sampled_from([Credential("fresh"), Credential("absent"), Credential("stale"), Credential("spent"),
                          Credential("seconds")]) | st.builds(Credential, st.just("text"), header_values)
signatures = st.sampled_from([Credential("right"), Credential("upper"), Credential("openssl"), Credential("absent"),
                              Credential("wrong secret"), Credential("truncated")]) \
    | st.builds(Credential, st.just("text"), header_values)


def small_body(endpoint: str) -> dict[str, Any]:
    if endpoint.startswith("Run/"):
        return {"prompt": "a fox"}
    if endpoint.startswith("Task/") and endpoint != "Task/List":
        return {"taskid": "1"}
    if endpoint == "Tool/Detail":
        return {"slugowner": "black-forest-labs", "slugproject": "flux-pro-1.1"}
    return {}


@fuzz(120)
@given(endpoint=st.sampled_from(ENDPOINTS), key=api_keys, nonce=nonces, signature=signatures)
def test_keys_nonces_and_signatures(api, endpoint, key, nonce, signature):
    """Only 200 or 401, and 401 for exactly what the protocol says."""
    project = api.project()
    real = {"key-only": project.key_only, "signed": project.signed}.get(key.kind)
    body = json.dumps(small_body(endpoint)).encode()
    headers: dict[str, Any] = {"content-type": "application/json"}
    if key.kind != "absent":
        headers["x-api-key"] = real.api_key if real else key.text
    nonce_text = {"fresh": api.nonce(), "stale": str(int(time.time()) - 100_000), "spent": api.nonce(),
                  "seconds": str(int(time.time())), "text": nonce.text}.get(nonce.kind)
    signer = real or project.signed
    if nonce.kind == "spent":  # the same request already made with this nonce
        spent = {"x-api-key": signer.api_key, "x-nonce": nonce_text,
                 "x-signature": sign_request(signer.api_key, signer.api_secret, nonce_text)}
        api.call(endpoint, body, {**spent, "content-type": "application/json"})
    if nonce_text is not None:
        headers["x-nonce"] = nonce_text
    right = sign_request(signer.api_key, signer.api_secret, (nonce_text or "").strip())
    signature_text = {
        "right": right, "upper": right.upper(), "openssl": f"SHA2-256(stdin)= {right}",
        "wrong secret": sign_request(signer.api_key, "wrong", nonce_text or ""), "truncated": right[:-1],
        "text": signature.text,
    }.get(signature.kind)
    if signature_text is not None:
        headers["x-signature"] = signature_text

    answer = api.call(endpoint, body, headers)
    message = answer["errors"][0]["message"] if answer["errors"] else None
    if real is None:
        assert message == UNKNOWN_KEY, answer
    elif real is project.key_only:
        assert message not in AUTH_MESSAGES, answer
    elif not header_bytes(nonce_text or "") or not header_bytes(signature_text or ""):
        assert message == SIGNATURE_REQUIRED, answer
    elif signature.kind in ("right", "upper", "openssl") and nonce.kind in ("fresh", "seconds"):
        assert message not in AUTH_MESSAGES, answer  # a good signature with a fresh nonce passes
    elif signature.kind in ("wrong secret", "truncated"):
        assert message == BAD_SIGNATURE, answer
    elif nonce.kind == "spent" and endpoint in (f"Run/{SLUG}", "Run/black-forest-labs/flux-pro-1-1") \
            and signature.kind in ("right", "upper", "openssl"):
        assert message == BAD_SIGNATURE, answer  # a replayed Run makes no second task


# --- (3) every endpoint's parameters --------------------------------------------------------------

@dataclass(frozen=True)
class TaskRef:
    """A value naming one of the example's tasks (known only once they are made)."""

    task: int  # 0: queued, 1: cancelled, 2: another project's
    field: str  # "id" or "token"
    spelling: str = "as is"


task_refs = st.builds(TaskRef, st.integers(0, 2), st.sampled_from(["id", "token"]),
                      st.sampled_from(["as is", "as is", "padded", "upper", "short", "number", "list"]))
ints = st.integers(-5, 30) | st.sampled_from([0, 1, 999, 1000, 1001, 10**9, 10**9 + 1, 2**63, -(2**63), 10**30])
odd_numbers = st.sampled_from(["", "x", "1.0", "1e2", " 3 ", "²", "١٠", "9" * 20, DIGITS_5001, 1.5, True,
                               float("nan"), None, [1], {"a": 1}])
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.sampled_from(["a fox", "  ", "é🦊", X_10000, X_10001, "fox \ud83e", "a\x00b"]) | texts,
    "promptUpsampling": st.sampled_from(["false", "true", False, True, "FALSE", 0, 1, "", None]),
    "safetyTolerance": st.sampled_from(["0", "6", "7", "-1", "2.0", 2.0, 2.5, 2]) | ints | odd_numbers,
    "aspectRatio": st.sampled_from(["1:1", "16:9", "21:9", "9:21", "7:3", "16:9 ", "", None, 1, "1:0", "0:1"]),
    "seed": st.sampled_from(["42", 0, 4294967295, 4294967296, -1, 42.0, 42.5, "0042", "٤٢", "1e3"]) | ints
    | odd_numbers,
    "outputFormat": st.sampled_from(["png", "jpeg", "JPEG", "jpg", "gif", "", None, 1]),
    "steps": ints | odd_numbers,
    "guidance": st.sampled_from(["3.5", "0", "50", "50.5", "-0", ".5", "1e1", "nan", float("inf")]) | odd_numbers,
    "strength": st.sampled_from(["0.05", "0.04", "1", "1.0001", "", "abc"]) | odd_numbers,
    "width": ints | odd_numbers,
    "height": ints | odd_numbers,
    "taskid": task_refs | ints | odd_numbers | st.sampled_from(["-1", "0", " 1 ", "\ud800"]),
    "tasktoken": task_refs | nasty | st.sampled_from(["nope", "a" * 30, "*", 1, [], {}]),
    "socketaccesstoken": task_refs | nasty | st.sampled_from(["nope", "a" * 30]),
    "start": ints | odd_numbers,
    "limit": ints | odd_numbers | st.sampled_from(["20", "0", "1001", "-3"]),
    "order": st.sampled_from(["asc", "desc", "DESC", " asc ", "sideways", "", None, 1, ["asc"]]) | nasty,
    "sort": st.sampled_from(["id", "createtime", "status", "ID", "name", "id; DROP TABLE tasks", "", None, 1])
    | nasty,
    "search": texts,
    "categories": st.sampled_from(['["flux"]', "flux,tool", "[]", "", "[1", "5", '{"a": 1}', '"flux"', "null",
                                   ["flux"], [], 5, {"a": 1}, True, None, [["x"]], 1.5]) | nasty,
    "slugowner": st.sampled_from(["black-forest-labs", "BLACK-FOREST-LABS ", "nobody", None, 1]) | texts,
    "slugproject": st.sampled_from(["flux-pro-1.1", "flux-pro-1-1", "flux-kontext-pro", "x", None]) | texts,
    "hideworkflows": st.sampled_from(["true", "false", True, "", "x", None]),
    "summary": st.sampled_from(["true", "false", True, False, "", "1", None, []]),
    "type": st.sampled_from(["model", "", "workflow"]),
    "modelName": st.sampled_from(["flux", "flux-pro-1.1", "FLUX-PRO-1-1", "%", "_"]) | texts,
    "callbackUrl": url_values, "callbackurl": url_values, "inputImageUrl": url_values, "inputImage": url_values,
    "fileid": st.sampled_from(["0" * 32, "f" * 32, " ", 1, [], {}]) | nasty | texts,
    "folderid": st.sampled_from(["0" * 32, "", " ", 1, [], {}]) | nasty | texts,
    "parentid": st.sampled_from(["0" * 32, "", " ", 1, [], {}]) | nasty | texts,
    "name": st.sampled_from(["training-set", "a b", "", "x" * 101, 1, [], {}]) | nasty | texts,
}
PARAMETERS_OF = {
    "Run": ("prompt", "promptUpsampling", "safetyTolerance", "aspectRatio", "seed", "outputFormat", "steps",
            "guidance", "strength", "width", "height", "callbackUrl", "callbackurl", "inputImage", "inputImageUrl"),
    "Task": ("taskid", "tasktoken", "socketaccesstoken"),
    "Task/List": ("start", "limit", "order", "sort", "type", "modelName"),
    "Tool/List": ("start", "limit", "search", "sort", "order", "categories", "slugowner", "hideworkflows", "summary"),
    "Tool/Detail": ("slugowner", "slugproject"),
    "Tool/Explore": ("start", "limit", "search"),
    "File/List": ("start", "limit", "order", "folderid"),
    "File/Delete": ("fileid",),
    "File/FolderCreate": ("name", "parentid"),
}
ENCODINGS = st.sampled_from(["json", "json", "form", "multipart", "lenient"])


@st.composite
def calls(draw: st.DrawFn, endpoints: tuple[str, ...]) -> tuple[str, dict[str, Any], str]:
    """An endpoint, some of its parameters with plausible or odd values, and how to encode them."""
    endpoint = draw(st.sampled_from(endpoints))
    names = PARAMETERS_OF.get(endpoint) or PARAMETERS_OF[endpoint.split("/")[0]]
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    odd = {name for name in chosen if name not in URL_PARAMETERS and draw(st.integers(0, 4)) == 0}
    values = {name: draw(json_values if name in odd else PLAUSIBLE[name]) for name in chosen}
    if endpoint.startswith("Run/") and "prompt" not in values and draw(st.booleans()):
        values["prompt"] = "a fox"
    return endpoint, values, draw(ENCODINGS)


def resolve(value: Any, tasks: list[dict[str, str]]) -> Any:
    if not isinstance(value, TaskRef):
        return value
    named = tasks[value.task]["taskid" if value.field == "id" else "socketaccesstoken"]
    return {"as is": named, "padded": f" {named} ", "upper": named.upper(), "short": named[:-1],
            "number": int(named) if named.isdigit() else named, "list": [named]}[value.spelling]


def encode(values: dict[str, Any], encoding: str) -> tuple[bytes, str]:
    if encoding == "json":
        return json_text(values), "application/json"
    if encoding == "lenient":  # the seed's curl: JSON-ish text under a multipart header without a boundary
        text = "{ " + ", ".join(f"{key}: {form_text(value)}" for key, value in values.items()) + ", }"
        return text.encode("utf-8", "surrogatepass"), "multipart/form-data"
    if encoding == "form":
        text = "&".join(f"{quote(key)}={quote(form_text(value), errors='surrogatepass')}"
                        for key, value in values.items())
        return text.encode(), "application/x-www-form-urlencoded"
    boundary = "fuzz-boundary-7d1f"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
             + form_text(value).encode("utf-8", "surrogatepass") + b"\r\n" for key, value in values.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def make_tasks(api: Api, project: Project) -> list[dict[str, str]]:
    """A queued task and a cancelled one of the project's, and one of another project's."""
    made = []
    for owner in (project, project, api.project()):
        run = api.post_json(f"Run/{SLUG}", {"prompt": "a fox"}, api.auth(owner, signed=False))
        assert run["result"] is True, run
        made.append(run)
    assert api.post_json("Task/Cancel", {"taskid": made[1]["taskid"]}, api.auth(project, False))["result"] is True
    return made


def called(api: Api, endpoint: str, values: dict[str, Any], encoding: str, signed: bool) -> None:
    project = api.project()
    tasks = make_tasks(api, project) if endpoint in TASK_ENDPOINTS or endpoint == "Task/List" else []
    values = {key: resolve(value, tasks) for key, value in values.items()}
    content, content_type = encode(values, encoding)
    answer = api.call(endpoint, content, {**api.auth(project, signed), "content-type": content_type})
    api.call(endpoint, content, {"x-api-key": project.key_only.api_key, "content-type": content_type})
    if answer["result"] and endpoint.startswith("Run/"):
        readable_task(api, project, answer)
    for task in answer.get("tasklist") or []:
        assert_task_shape(task)
        assert task["id"] in {tasks[0]["taskid"], tasks[1]["taskid"]}, f"another project's task: {task['id']}"
    if answer["result"] and endpoint in ("Tool/List", "Tool/Detail"):
        assert isinstance(answer["tool"], list)


@fuzz(70)
@given(call=calls(RUN_ENDPOINTS), signed=st.booleans())
def test_run_parameters(api, call, signed):
    called(api, *call, signed)


@fuzz(50)
@given(call=calls(TASK_ENDPOINTS), signed=st.booleans())
def test_task_parameters(api, call, signed):
    called(api, *call, signed)


@fuzz(60)
@given(call=calls(LIST_ENDPOINTS), signed=st.booleans())
def test_list_and_tool_parameters(api, call, signed):
    called(api, *call, signed)


@fuzz(40)
@given(call=calls(FILE_ENDPOINTS), signed=st.booleans())
def test_file_parameters(api, call, signed):
    called(api, *call, signed)


@fuzz(40)
@given(file=FILE_CONTENTS, name=st.sampled_from(["file", "file", "inputImage", "File", ""]),
       filename=st.sampled_from(["a.png", "", "../x.png", "é"]), signed=st.booleans(),
       target=st.sampled_from(["File/Upload", f"Run/{EDIT_SLUG}"]))
def test_uploaded_files(api, file, name, filename, signed, target):
    boundary = "fuzz-boundary-7d1f"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + file + b"\r\n"]
    if target.startswith("Run/"):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nedit it\r\n'.encode())
    content = b"".join(parts) + f"--{boundary}--\r\n".encode()
    project = api.project()
    headers = {**api.auth(project, signed), "content-type": f"multipart/form-data; boundary={boundary}"}
    answer = api.call(target, content, headers)
    if answer["result"] and target.startswith("Run/"):
        readable_task(api, project, answer)
    if answer["result"] and target == "File/Upload":
        [stored] = answer["list"]
        assert api.send(httpx.URL(stored["url"]).path, method="GET").content == file
        listed = api.call("File/List", b"{}", {**api.auth(project, False), "content-type": "application/json"})
        assert listed["list"] == [stored]


# --- what the searches found -------------------------------------------------------------------

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
BROKE_THE_SERVER = [  # (id, endpoint, body, content type, signed)
    ("JSON nested 100000 deep", "Task/List", HUGE_BODIES["JSON arrays 100000 deep"], JSON, False),
    ("lenient body nested 500 deep", "Task/Detail", HUGE_BODIES["lenient arrays 500 deep"], None, False),
    ("start of 5001 digits", "Task/List", HUGE_BODIES["a start of 5001 digits"], JSON, False),
    ("limit of 5001 digits", "Tool/List", b'{"limit": "' + DIGITS_5001.encode() + b'"}', JSON, False),
    ("seed of 5001 digits", f"Run/{SLUG}", b"prompt=x&seed=" + DIGITS_5001.encode(), FORM, True),
    ("taskid of 5001 digits", "Task/Detail", HUGE_BODIES["a taskid of 5001 digits"], JSON, False),
    ("taskid superscript two", "Task/Kill", b'{"taskid": "\\u00b2"}', JSON, False),
    ("taskid superscript two, form", "Task/Cancel", b"taskid=%C2%B2", FORM, True),
    ("taskid over 64 bits", "Task/Cancel", b'{"taskid": "99999999999999999999"}', JSON, True),
    ("taskid over 64 bits, number", "Task/Detail", b'{"taskid": 100000000000000000000}', JSON, False),
    ("tasktoken lone surrogate", "Task/Detail", b'{"tasktoken": "\\ud800"}', JSON, False),
    ("socketaccesstoken lone surrogate", "Task/InputOutputDelete", b'{"socketaccesstoken": "\\udc80"}', JSON,
     True),
    ("modelName lone surrogate", "Task/List", b'{"modelName": "\\ud800"}', JSON, False),
    ("tasktoken NUL (PostgreSQL)", "Task/Detail", b'{"tasktoken": "a\\u0000b"}', JSON, False),
    ("modelName NUL (PostgreSQL)", "Task/List", b'{"modelName": "\\u0000"}', JSON, True),
    ("categories a number", "Tool/List", b'{"categories": 5}', JSON, False),
    ("categories true", "Tool/List", b'{"categories": true}', JSON, False),
    ("categories an object", "Tool/List", b'{"categories": {"a": 1}}', JSON, False),
    ("callbackUrl bad IPv6", f"Run/{SLUG}", b'{"prompt": "x", "callbackUrl": "http://["}', JSON, False),
    ("inputImageUrl bad IPv6", f"Run/{EDIT_SLUG}", b'{"prompt": "x", "inputImageUrl": "https://[::1"}', JSON, True),
    ("inputImage bad IPv6, form", f"Run/{EDIT_SLUG}", b"prompt=x&inputImage=http%3A%2F%2F%5B", FORM, False),
    ("prompt lone surrogate", f"Run/{SLUG}", b'{"prompt": "a fox \\ud83e"}', JSON, False),
    ("prompt lone surrogate, lenient", f"Run/{SLUG}", b'{ prompt: "a fox \\ud83e", }', "multipart/form-data", True),
    ("taskid over 32 bits (PostgreSQL)", "Task/Detail", b'{"taskid": "3000000000"}', JSON, True),
    ("JSON nested 400 deep, read back", "Task/List", b'{"a": ' + b"[" * 400 + b"]" * 400 + b"}", JSON, False),
]


@pytest.mark.parametrize(("endpoint", "content", "content_type", "signed"),
                         [case[1:] for case in BROKE_THE_SERVER], ids=[case[0] for case in BROKE_THE_SERVER])
def test_requests_that_broke_the_server(api, endpoint, content, content_type, signed):
    posted(api, endpoint, content, content_type, signed)


# --- paths and methods ----------------------------------------------------------------------------

path_segments = st.sampled_from(["Task", "Run", "Tool", "Detail", "List", "", ".", "..", "%2e%2e", "%2F", "%00",
                                 "black-forest-labs", "flux-pro-1.1", "x" * 300, "%ff", "%zz", "é", ";"]) \
    | st.text(st.characters(codec="ascii", categories=("L", "N")), max_size=12)
NOT_THE_PROTOCOL = ("/healthz", "/readyz", "/metrics", "/files/", "/v1/docs", "/v1/openapi.json", "/v1/redoc")


@fuzz(60)
@given(prefix=st.sampled_from(["/v1/", "/v1/", "/", "/files/", "/v1/Run/", "/v1/Task/", "/v2/"]),
       segments=st.lists(path_segments, max_size=4),
       method=st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
def test_unknown_paths_and_methods(api, prefix, segments, method):
    path = prefix + "/".join(segments)
    response = api.send(path, b"{}", {**api.auth(api.project(), False), "content-type": "application/json"}, method)
    if path.startswith(NOT_THE_PROTOCOL) or method == "HEAD":
        return
    protocol_answer(response)
