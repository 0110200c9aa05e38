"""A live fluxhost server in a thread or as a process, and a protocol client that signs like real
clients do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import uvicorn
from starlette.types import ASGIApp

from fluxhost.app import UVICORN_OPTIONS, create_app
from fluxhost.client import NonceSource
from fluxhost.orders import WorkOrder
from fluxhost.service import Service
from fluxhost.settings import Settings
from fluxhost.signing import KeyMode, sign_request
from fluxhost.statuses import TERMINAL
from fluxhost.store.database import Database
from fluxhost.store.keys import KeyStore, NewKey

SLUG = "black-forest-labs/flux-pro-1.1"
TORCH_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
"""Torch threads for a test's engines: one each when pytest-xdist runs a worker per core (``make
test``), so that two workers' torch threads do not fight over the cores; two when run alone."""
LOOPBACK_HTTP = httpx.Client(timeout=30)
"""One HTTP client for the tests' requests to their servers: ``httpx.post`` builds a client, and its
TLS context (about 20 ms of CPU), for every request, which a test polling a task pays at each poll."""
# A small text-to-image order, for tests that write task rows themselves.
FOX_ORDER = WorkOrder(prompt="a fox", width=64, height=64, seed=1, output_format="png", aspect_ratio="1:1")


def database_with_project(url: str) -> tuple[Database, int]:
    """A migrated database at ``url`` with one project (behind a key-only key), and that project's id."""
    db = Database(url)
    db.migrate()
    keys = KeyStore(db)
    return db, keys.find_active(keys.create(KeyMode.KEY_ONLY).api_key).project_id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def slow_to_resolve(host: str) -> Iterator[threading.Event]:
    """Inside the block, resolving ``host`` waits until the block ends (10 s at most), then fails
    as an unknown name: nothing is ever connected to. Yields an event set once it is asked."""
    asked, release = threading.Event(), threading.Event()
    real_lookup = socket.getaddrinfo

    def lookup(name: str, *args: Any, **kwargs: Any) -> Any:
        if name != host:
            return real_lookup(name, *args, **kwargs)
        asked.set()
        release.wait(10)
        raise socket.gaierror(f"{name}: no such name")

    socket.getaddrinfo = lookup
    try:
        yield asked
    finally:
        release.set()
        socket.getaddrinfo = real_lookup


@contextmanager
def held(owner: object, method: str) -> Iterator[threading.Event]:
    """Inside the block, each call of ``method`` on ``owner`` (an instance, the method its class's)
    waits until the block ends (10 s at most), then goes on. Yields an event set once a call waits."""
    waiting, release = threading.Event(), threading.Event()
    real = getattr(owner, method)

    def wait_then_call(*args: Any, **kwargs: Any) -> Any:
        waiting.set()
        release.wait(10)
        return real(*args, **kwargs)

    setattr(owner, method, wait_then_call)
    try:
        yield waiting
    finally:
        release.set()
        delattr(owner, method)  # the class's own again


T = TypeVar("T")


def sent_while_waiting(waiting: AbstractContextManager[threading.Event], send: Callable[[], T],
                       client: ProtocolClient) -> T:
    """``send()`` on a thread of its own, held up inside ``waiting`` (:func:`held`,
    :func:`slow_to_resolve`) once it gets there; meanwhile ``client``'s Task/List, database work,
    must be answered. What ``send`` returned."""
    answers: list[T] = []
    sender = threading.Thread(target=lambda: answers.append(send()))
    with waiting as reached:
        sender.start()
        assert reached.wait(30), "the request never reached the wait"
        assert client.post("Task/List", {}, timeout=5).json()["result"] is True  # while it waits
    sender.join(30)
    assert answers, "the request was never answered"
    return answers[0]


class LiveServer:
    """The real app under uvicorn on a loopback port, in a background thread."""

    def __init__(self, settings: Settings, doors: Mapping[str, Callable[[Service], ASGIApp]] | None = None):
        """``doors``: prefix -> a function making a door app over the service, mounted beside /v1."""
        self.settings = settings
        self.service = Service(settings)
        self.app = create_app(self.service, {prefix: make(self.service) for prefix, make in (doors or {}).items()})
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host=settings.host, port=settings.port, lifespan="on",
                           **UVICORN_OPTIONS)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base_url = f"http://{settings.host}:{settings.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


FLUXHOST = os.path.join(os.path.dirname(sys.executable), "fluxhost")


class ServiceProcess:
    """``fluxhost <args>`` as a child process with ``env`` added to ours, its output collected."""

    def __init__(self, args: list[str], env: Mapping[str, str]):
        env = {"FLUXHOST_SHUTDOWN_GRACE_SECONDS": "2", **env}  # a test's last task need not finish to stop
        self.process = subprocess.Popen([FLUXHOST, *args], env={**os.environ, **env}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._terminated = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"never printed {text!r}:\n{self.output}")
            time.sleep(0.05)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM, once: a second one makes uvicorn quit at once)."""
        if self.process.poll() is None and not self._terminated:
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self) -> None:
        self.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._reader.join(5)


def stop_all(processes: Collection[ServiceProcess]) -> None:
    """Stop processes together: each takes a second or more to wind down."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()


def wait_until_ready(base_url: str, process: ServiceProcess | None = None, path: str = "/readyz",
                     timeout: float = 90) -> None:
    """Until ``GET base_url + path`` answers 200 (a server starting up); fails with the process's
    output if it exits first, or when the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.process.poll() is not None:
            raise RuntimeError(f"the server exited before it was ready:\n{process.output}")
        try:
            if httpx.get(f"{base_url}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base_url}{path} never answered 200:\n{process.output if process else ''}")
        time.sleep(0.1)


@contextmanager
def fresh_postgres_database(server_url: str, prefix: str = "test") -> Iterator[str]:
    """A new, empty database on the PostgreSQL server at ``server_url`` (an SQLAlchemy URL), its
    URL yielded, dropped afterwards even with connections still open."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# Millisecond timestamps, as real clients send: a counter started at import would fall out of the
# server's nonce window in a session longer than the window.
_nonces = NonceSource()


@dataclass
class ProtocolClient:
    """Speaks the protocol over HTTP: signed (fresh nonce per call) or key-only."""

    base_url: str
    key: NewKey
    signed: bool = True

    def headers(self, nonce: str | None = None) -> dict[str, str]:
        if not self.signed:
            return {"x-api-key": self.key.api_key}
        nonce = nonce or _nonces.next()
        return {"x-api-key": self.key.api_key, "x-nonce": nonce,
                "x-signature": sign_request(self.key.api_key, self.key.api_secret, nonce)}

    def post(self, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers") if "headers" in kwargs else self.headers()
        return LOOPBACK_HTTP.post(f"{self.base_url}/v1/{path}", json=body or {}, headers=headers, **kwargs)

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.post(path, body)
        assert response.status_code == 200, response.text
        return response.json()

    def run(self, **inputs: Any) -> dict[str, Any]:
        answer = self.call(f"Run/{SLUG}", {"prompt": "a red fox in the snow", **inputs})
        assert answer["result"] is True, answer
        return answer

    def detail(self, taskid: str) -> dict[str, Any]:
        answer = self.call("Task/Detail", {"taskid": taskid})
        assert answer["result"] is True, answer
        return answer["tasklist"][0]

    def wait(self, taskid: str, statuses: Collection[str] = TERMINAL, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = self.detail(taskid)
            if task["status"] in statuses:
                return task
            assert time.monotonic() < deadline, f"task {taskid} stuck in {task['status']}"
            time.sleep(0.05)


class LoopbackServer:
    """An ``http.server`` handler class served on a loopback port in a background thread, for the
    outside services a test stands in for; it stops when the ``with`` block ends."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], path: str = ""):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver(LoopbackServer):
    """A local HTTP endpoint for callbacks: answers with the given status codes in turn (the last
    one repeats) and records every request, with the client's port. ``keep_alive``: HTTP/1.1,
    a connection kept open for the next request (else HTTP/1.0: closed after each)."""

    def __init__(self, statuses: list[int] | None = None, keep_alive: bool = False):
        self.statuses = list(statuses or [200])
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append({"time": time.monotonic(), "headers": dict(self.headers), "body": body,
                                          "client_port": self.client_address[1]})
                status = receiver.statuses[min(len(receiver.requests), len(receiver.statuses)) - 1]
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler, "/hook")

    def wait_for(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {count} callbacks arrived"
            time.sleep(0.02)
        return self.requests


class DrippingReceiver(LoopbackServer):
    """A callback receiver that answers as slowly as it can: ``"body"`` sends ``200`` with a
    100,000-byte Content-Length, then one byte of it per ``interval``; ``"headers"`` sends its status
    line, then one byte of a header per ``interval``, never finishing the headers. Records every
    request's arrival and headers."""

    def __init__(self, drip: str, interval: float = 0.25):
        self.requests: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append({"time": time.monotonic(), "headers": dict(self.headers)})
                if drip == "body":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                else:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                try:
                    while not receiver.stopping.wait(interval):
                        self.wfile.write(b"a")
                        self.wfile.flush()
                except OSError:  # the sender gave up and closed the connection
                    pass
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler, "/hook")

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        super().__exit__(*exc)
