"""The Python SDK: a client for any server speaking the task protocol (fluxhost or the hosted API).

    from fluxhost.client import Client

    with Client("http://127.0.0.1:8000", api_key="...", api_secret="...") as client:
        task = client.run("black-forest-labs/flux-pro-1.1", prompt="a lighthouse at dusk", aspectRatio="16:9")
        done = task.wait(via="socket", on_progress=lambda p: print(p.percentage))
        paths = task.download("images/")

:class:`AsyncClient` has the same methods as coroutines. Results are pydantic models parsed from the
string-typed wire; a ``result: false`` answer raises :class:`ProtocolError` with its code and message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar
from urllib.parse import urlsplit

import httpx
from httpx import Response
from pydantic import BaseModel, ConfigDict, Field

from fluxhost.signing import signed_headers
from fluxhost.statuses import TERMINAL, Status

RETRY_STATUSES = (429, 500, 502, 503, 504)
UNSENT_STATUSES = (429, 503)  # a server's answers that say it did nothing with the request
UNSENT = "unsent"
"""``retry`` for a call that must not be sent twice: tried again only where the first try surely
did nothing (no connection made, 429, 503)."""
DEFAULT_SERVER = "http://127.0.0.1:8000"
T = TypeVar("T")


class FluxhostError(Exception):
    """Anything the client could not do."""


class ProtocolError(FluxhostError):
    """The server answered ``result: false`` (or 401): ``code`` and ``message`` are its words."""

    def __init__(self, code: int, message: str, status_code: int = 200):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.status_code = status_code


class AuthenticationError(ProtocolError):
    """The server refused the credentials (HTTP 401)."""


class ServerUnavailable(FluxhostError):
    """No server answered at the base URL (after retries where allowed)."""


class WaitTimeout(FluxhostError):
    """The task had not ended when ``wait`` gave up."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Output(_Wire):
    id: str = ""
    name: str
    contenttype: str = ""
    size: int = 0
    url: str


class Progress(_Wire):
    """A ``task_output`` progress frame's message."""

    percentage: int = 0
    step: int = Field(0, alias="stepCurrent")
    total: int = Field(0, alias="stepTotal")
    speed: float = 0.0
    speed_type: str = Field("it/s", alias="speedType")
    elapsed: str = Field("", alias="elapsedTime")
    remaining: str = Field("", alias="remainingTime")


class TaskInfo(_Wire):
    """A task as Task/Detail shows it, with numbers as numbers."""

    id: int
    uuid: str = ""
    socketaccesstoken: str
    status: str
    pexit: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    debugoutput: str = ""
    debugerror: str = ""
    createtime: int = 0
    starttime: int = 0
    endtime: int = 0
    canceltime: int = 0
    elapsedseconds: float = 0.0
    outputs: list[Output] = Field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == Status.POSTPROCESS_END and self.pexit == "0"

    @property
    def cancelled(self) -> bool:
        return self.status == Status.CANCEL

    @property
    def seed(self) -> str:
        return str(self.parameters.get("seed", ""))

    @property
    def state(self) -> str:
        """The task in a word: queued, running, done, failed, moderated or cancelled."""
        if self.cancelled:
            return "cancelled"
        if self.ended:
            if self.succeeded:
                return "done"
            return "moderated" if "moderated" in self.debugerror.lower() else "failed"
        return "queued" if self.status == Status.QUEUE else "running"


class RunResult(_Wire):
    taskid: int
    socketaccesstoken: str


class NonceSource:
    """Millisecond timestamps, bumped so that no two calls share one even within a millisecond."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            self._last = max(int(time.time() * 1000), self._last + 1)
            return str(self._last)


def _headers(api_key: str, api_secret: str | None, nonces: NonceSource) -> dict[str, str]:
    return signed_headers(api_key, api_secret, nonces.next() if api_secret else "")


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON of a protocol answer, or the protocol error it carries."""
    try:
        body = response.json()
    except ValueError:
        raise FluxhostError(f"the server answered HTTP {response.status_code} with no protocol JSON") from None
    if body.get("result") is True:
        return body
    errors = body.get("errors") or [{"code": 0, "message": f"HTTP {response.status_code}"}]
    kind = AuthenticationError if response.status_code == 401 else ProtocolError
    raise kind(int(errors[0].get("code", 0)), str(errors[0].get("message", "")), response.status_code)


def _settle(attempt: Response | httpx.TransportError, last: bool, base_url: str,
            unsent_only: bool = False) -> dict[str, Any] | None:
    """The answer of one try of a call; None when it should be tried again (``unsent_only``: only
    where the try surely did nothing)."""
    if isinstance(attempt, httpx.TransportError):
        if last or (unsent_only and not isinstance(attempt, httpx.ConnectError)):
            raise ServerUnavailable(f"no answer from {base_url}: {attempt}") from None
        return None
    if not last and attempt.status_code in (UNSENT_STATUSES if unsent_only else RETRY_STATUSES):
        return None
    return _answer(attempt)


def _frame_ends(frame: dict[str, Any], on_progress: Callable[[Progress], None] | None) -> bool:
    """Act on one socket frame; True once it is the task's last."""
    if frame.get("result") is False:
        raise FluxhostError(str(frame.get("errors")))
    if frame["type"] == Status.OUTPUT and isinstance(frame.get("message"), dict) and on_progress:
        on_progress(Progress.model_validate(frame["message"]))
    return frame["type"] in TERMINAL


def _wire_value(value: Any) -> str | Path | bytes:
    if isinstance(value, (Path, bytes)):
        return value  # a file, sent as a multipart upload
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _content(body: dict[str, Any]) -> dict[str, Any]:
    """httpx's arguments for a body: JSON, or multipart when a value is a file."""
    files = {key: (value.name if isinstance(value, Path) else key,
                   value.read_bytes() if isinstance(value, Path) else value)
             for key, value in body.items() if isinstance(value, (Path, bytes))}
    if not files:
        return {"json": body}
    return {"data": {key: value for key, value in body.items() if key not in files}, "files": files}


def _lookup(task: int | str) -> dict[str, str]:
    return {"taskid": str(task)} if isinstance(task, int) or str(task).isdigit() else {"tasktoken": str(task)}


def _new_path(folder: Path, task_id: int, name: str) -> Path:
    """Where an output is saved: ``<task id>-<its name>`` in ``folder``, numbered where that file
    is there already (task ids start again on another server, or a fresh one): a download never
    overwrites an earlier picture."""
    first = folder / f"{task_id}-{Path(name).name}"
    candidates = (first.with_stem(f"{first.stem}-{number}") for number in itertools.count(2))
    return next(path for path in itertools.chain([first], candidates) if not path.exists())


@contextmanager
def _written_whole(path: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A file for ``path`` under a hidden name, renamed to it once written: a download cut off
    leaves no partial picture."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as file:
            yield path, file
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _socket_url(base_url: str) -> str:
    """The socket beside the HTTP calls: under the base URL's path too (a server behind a proxy at
    ``https://host/fluxhost``)."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/v1"


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One protocol call: its path under ``/v1``, its body, whether it may be sent again when its
    answer is lost, and what to make of the answer."""

    path: str
    body: dict[str, Any]
    read: Callable[[dict[str, Any]], T]
    retry: bool | str = True


class _Calls:
    """The protocol's calls, written once: :class:`Client` and :class:`AsyncClient` only send them."""

    @staticmethod
    def upload(file: Path | bytes) -> _Call[str]:
        return _Call("File/Upload", {"file": file}, lambda answer: answer["list"][0]["url"])

    @staticmethod
    def uploads(start: int, limit: int, order: str) -> _Call[list[dict[str, str]]]:
        return _Call("File/List", {"start": start, "limit": limit, "order": order}, lambda answer: answer["list"])

    @staticmethod
    def delete_upload(file_id: str) -> _Call[None]:
        """Tried again only where the first try did nothing: a resend whose first try went through
        would be told the file is gone."""
        return _Call("File/Delete", {"fileid": file_id}, lambda _answer: None, retry=UNSENT)

    @staticmethod
    def run(model: str, inputs: dict[str, Any]) -> _Call[RunResult]:
        """Never retried: a lost answer must not make a second task."""
        return _Call(f"Run/{model}", {k: _wire_value(v) for k, v in inputs.items()}, RunResult.model_validate,
                     retry=False)

    @staticmethod
    def detail(task: int | str) -> _Call[TaskInfo]:
        return _Call("Task/Detail", _lookup(task), _first_task)

    @staticmethod
    def list_tasks(start: int, limit: int, order: str) -> _Call[list[TaskInfo]]:
        return _Call("Task/List", {"start": start, "limit": limit, "order": order},
                     lambda answer: [TaskInfo.model_validate(task) for task in answer["tasklist"]])

    @staticmethod
    def cancel(task: int | str) -> _Call[TaskInfo]:
        """Tried again only where the first try did nothing: a resend whose first try went through
        would be told the task cannot be cancelled (it is)."""
        return _Call("Task/Cancel", _lookup(task), _first_task, retry=UNSENT)

    @staticmethod
    def kill(task: int | str) -> _Call[TaskInfo]:
        """Tried again only where the first try did nothing: a resend whose first try went through
        would be told the task has ended."""
        return _Call("Task/Kill", _lookup(task), _first_task, retry=UNSENT)

    @staticmethod
    def delete_files(task: int | str) -> _Call[None]:
        return _Call("Task/InputOutputDelete", _lookup(task), lambda _answer: None)

    @staticmethod
    def tools(search: str) -> _Call[list[dict[str, Any]]]:
        return _Call("Tool/List", {"search": search, "limit": 1000}, lambda answer: answer["tool"])

    @staticmethod
    def tool(model: str) -> _Call[dict[str, Any]]:
        owner, _, project = model.partition("/")
        return _Call("Tool/Detail", {"slugowner": owner, "slugproject": project}, lambda answer: answer["tool"][0])


def _first_task(answer: dict[str, Any]) -> TaskInfo:
    return TaskInfo.model_validate(answer["tasklist"][0])


def _poll_intervals(first: float = 0.25, growth: float = 1.5, largest: float = 3.0):
    interval = first
    while True:
        yield interval
        interval = min(largest, interval * growth)


class Client:
    """A synchronous client. ``api_secret`` given: signed requests; else key-only."""

    def __init__(self, base_url: str = DEFAULT_SERVER, api_key: str = "", api_secret: str | None = None, *,
                 timeout: float = 30.0, retries: int = 3, transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.api_secret = api_secret
        self.retries = retries
        self._nonces = NonceSource()
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, path: str, body: dict[str, Any] | None = None, *, retry: bool | str = True) -> dict[str, Any]:
        """POST ``/v1/{path}``; retried with backoff on 429, 5xx and connection errors if ``retry``
        (:data:`UNSENT`: on those that say the server did nothing). Values that are files (a
        ``Path`` or ``bytes``) go as multipart uploads."""
        tries = self.retries + 1 if retry else 1
        content = _content(body or {})
        for attempt in range(tries):
            try:
                outcome = self._http.post(f"/v1/{path}", **content,
                                          headers=_headers(self.api_key, self.api_secret, self._nonces))
            except httpx.TransportError as error:
                outcome = error
            answer = _settle(outcome, attempt == tries - 1, self.base_url, retry == UNSENT)
            if answer is not None:
                return answer
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def send(self, call: _Call[T]) -> T:
        return call.read(self.call(call.path, call.body, retry=call.retry))

    def upload(self, file: Path | bytes) -> str:
        """Store an image on the server (File/Upload); returns its URL, which a later Run takes as
        ``inputImage``."""
        return self.send(_Calls.upload(file))

    def uploads(self, start: int = 0, limit: int = 20, order: str = "desc") -> list[dict[str, str]]:
        """The project's uploaded files (File/List), newest first: each with its ``id``, ``name``,
        ``size``, ``addedtime`` and ``url``."""
        return self.send(_Calls.uploads(start, limit, order))

    def delete_upload(self, file_id: str) -> None:
        """Delete an uploaded file by its ``id`` (File/Delete); Runs naming its URL are refused after."""
        self.send(_Calls.delete_upload(file_id))

    def run(self, model: str, **inputs: Any) -> Task:
        """Start ``model`` (``owner/project``) with the tool's inputs (an ``inputImage`` may be a
        ``Path`` or ``bytes``: it is uploaded with the request). Never retried: a lost answer must
        not make a second task."""
        result = self.send(_Calls.run(model, inputs))
        return Task(self, result.taskid, result.socketaccesstoken)

    def detail(self, task: int | str) -> TaskInfo:
        """A task by id or socket token."""
        return self.send(_Calls.detail(task))

    def list_tasks(self, start: int = 0, limit: int = 20, order: str = "desc") -> list[TaskInfo]:
        return self.send(_Calls.list_tasks(start, limit, order))

    def cancel(self, task: int | str) -> TaskInfo:
        return self.send(_Calls.cancel(task))

    def kill(self, task: int | str) -> TaskInfo:
        return self.send(_Calls.kill(task))

    def delete_files(self, task: int | str) -> None:
        """Remove an ended task's input and output files (its record stays)."""
        self.send(_Calls.delete_files(task))

    def tools(self, search: str = "") -> list[dict[str, Any]]:
        return self.send(_Calls.tools(search))

    def tool(self, model: str) -> dict[str, Any]:
        return self.send(_Calls.tool(model))

    def wait(self, task: Task, timeout: float | None = None, via: str = "socket",
             on_progress: Callable[[Progress], None] | None = None) -> TaskInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        if via == "socket":
            try:
                self._follow_socket(task, deadline, on_progress)
            except WaitTimeout:
                raise
            except Exception:  # the socket failed: polling still gets there
                pass
        for interval in _poll_intervals():
            info = self.detail(task.id)
            if info.ended:
                return info
            if deadline is not None and time.monotonic() + interval > deadline:
                raise WaitTimeout(f"task {task.id} still {info.status}")
            time.sleep(interval)
        raise AssertionError("unreachable")

    def _follow_socket(self, task: Task, deadline: float | None,
                       on_progress: Callable[[Progress], None] | None) -> None:
        from websockets.sync.client import connect

        with connect(_socket_url(self.base_url), open_timeout=10) as ws:
            ws.send(json.dumps({"type": "task_info", "tasktoken": task.token}))
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout(f"task {task.id} did not end in time")
                try:
                    frame = json.loads(ws.recv(timeout=remaining))
                except TimeoutError:
                    raise WaitTimeout(f"task {task.id} did not end in time") from None
                if _frame_ends(frame, on_progress):
                    return

    def download(self, info: TaskInfo, folder: str | Path) -> list[Path]:
        """Save the task's outputs into ``folder`` (see :func:`_new_path`); returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        saved = []
        for output in info.outputs:
            with self._http.stream("GET", output.url) as response:
                response.raise_for_status()
                with _written_whole(_new_path(folder, info.id, output.name)) as (path, file):
                    for chunk in response.iter_bytes():
                        file.write(chunk)
            saved.append(path)
        return saved


class Task:
    """A handle on a task this client started or looked up."""

    def __init__(self, client: Client, task_id: int, token: str):
        self.client = client
        self.id = task_id
        self.token = token

    def __repr__(self) -> str:
        return f"Task(id={self.id})"

    def detail(self) -> TaskInfo:
        return self.client.detail(self.id)

    def wait(self, timeout: float | None = None, via: str = "socket",
             on_progress: Callable[[Progress], None] | None = None) -> TaskInfo:
        """Block until the task ends (``via`` the socket, falling back to polling; or ``"poll"``)."""
        return self.client.wait(self, timeout, via, on_progress)

    def cancel(self) -> TaskInfo:
        return self.client.cancel(self.id)

    def kill(self) -> TaskInfo:
        return self.client.kill(self.id)

    def download(self, folder: str | Path) -> list[Path]:
        """Save the outputs of the ended task into ``folder``; returns their paths."""
        return self.client.download(self.client.detail(self.id), folder)


class AsyncClient:
    """The asynchronous client: :class:`Client`'s methods as coroutines."""

    def __init__(self, base_url: str = DEFAULT_SERVER, api_key: str = "", api_secret: str | None = None, *,
                 timeout: float = 30.0, retries: int = 3, transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.api_secret = api_secret
        self.retries = retries
        self._nonces = NonceSource()
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, path: str, body: dict[str, Any] | None = None, *,
                   retry: bool | str = True) -> dict[str, Any]:
        tries = self.retries + 1 if retry else 1
        content = _content(body or {})
        for attempt in range(tries):
            try:
                outcome = await self._http.post(f"/v1/{path}", **content,
                                                headers=_headers(self.api_key, self.api_secret, self._nonces))
            except httpx.TransportError as error:
                outcome = error
            answer = _settle(outcome, attempt == tries - 1, self.base_url, retry == UNSENT)
            if answer is not None:
                return answer
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    async def send(self, call: _Call[T]) -> T:
        return call.read(await self.call(call.path, call.body, retry=call.retry))

    async def upload(self, file: Path | bytes) -> str:
        return await self.send(_Calls.upload(file))

    async def uploads(self, start: int = 0, limit: int = 20, order: str = "desc") -> list[dict[str, str]]:
        return await self.send(_Calls.uploads(start, limit, order))

    async def delete_upload(self, file_id: str) -> None:
        await self.send(_Calls.delete_upload(file_id))

    async def run(self, model: str, **inputs: Any) -> AsyncTask:
        result = await self.send(_Calls.run(model, inputs))
        return AsyncTask(self, result.taskid, result.socketaccesstoken)

    async def detail(self, task: int | str) -> TaskInfo:
        return await self.send(_Calls.detail(task))

    async def list_tasks(self, start: int = 0, limit: int = 20, order: str = "desc") -> list[TaskInfo]:
        return await self.send(_Calls.list_tasks(start, limit, order))

    async def cancel(self, task: int | str) -> TaskInfo:
        return await self.send(_Calls.cancel(task))

    async def kill(self, task: int | str) -> TaskInfo:
        return await self.send(_Calls.kill(task))

    async def delete_files(self, task: int | str) -> None:
        await self.send(_Calls.delete_files(task))

    async def tools(self, search: str = "") -> list[dict[str, Any]]:
        return await self.send(_Calls.tools(search))

    async def tool(self, model: str) -> dict[str, Any]:
        return await self.send(_Calls.tool(model))

    async def wait(self, task: AsyncTask, timeout: float | None = None, via: str = "socket",
                   on_progress: Callable[[Progress], None] | None = None) -> TaskInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        if via == "socket":
            try:
                await self._follow_socket(task, deadline, on_progress)
            except WaitTimeout:
                raise
            except Exception:  # the socket failed: polling still gets there
                pass
        for interval in _poll_intervals():
            info = await self.detail(task.id)
            if info.ended:
                return info
            if deadline is not None and time.monotonic() + interval > deadline:
                raise WaitTimeout(f"task {task.id} still {info.status}")
            await asyncio.sleep(interval)
        raise AssertionError("unreachable")

    async def _follow_socket(self, task: AsyncTask, deadline: float | None,
                             on_progress: Callable[[Progress], None] | None) -> None:
        from websockets.asyncio.client import connect

        async with connect(_socket_url(self.base_url), open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "task_info", "tasktoken": task.token}))
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), remaining))
                except TimeoutError:
                    raise WaitTimeout(f"task {task.id} did not end in time") from None
                if _frame_ends(frame, on_progress):
                    return

    async def download(self, info: TaskInfo, folder: str | Path) -> list[Path]:
        """Save the task's outputs into ``folder`` (see :func:`_new_path`); returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        saved = []
        for output in info.outputs:
            response = await self._http.get(output.url)
            response.raise_for_status()
            with _written_whole(_new_path(folder, info.id, output.name)) as (path, file):
                file.write(response.content)
            saved.append(path)
        return saved


class AsyncTask:
    """A handle on a task, for :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient, task_id: int, token: str):
        self.client = client
        self.id = task_id
        self.token = token

    async def detail(self) -> TaskInfo:
        return await self.client.detail(self.id)

    async def wait(self, timeout: float | None = None, via: str = "socket",
                   on_progress: Callable[[Progress], None] | None = None) -> TaskInfo:
        return await self.client.wait(self, timeout, via, on_progress)

    async def cancel(self) -> TaskInfo:
        return await self.client.cancel(self.id)

    async def kill(self) -> TaskInfo:
        return await self.client.kill(self.id)

    async def download(self, folder: str | Path) -> list[Path]:
        return await self.client.download(await self.client.detail(self.id), folder)
