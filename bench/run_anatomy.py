"""Where a signed Run's CPU goes, and how far it is from the floor: what a speed pass starts from.

First, in this process, one request at a time and no sockets: the service's app (the embedded
default's SQLite, no worker, the bench engine's catalogue) answers signed Runs through ASGI, and
then each step of a Run is timed alone as many times: the key found and the signature checked,
the limits read, the inputs parsed, the nonce and the task committed together. What the whole Run
costs beyond its steps is the HTTP framework, the door, the middleware and the hand-over to a
database thread and back, which one request at a time pays in full (wake-ups of both threads);
under load the hand-overs overlap. The hand-over is timed apart: the whole Run again, its work done
on the event loop.

Then over loopback, with `serve_load.py`'s load generator (32 clients, signed Runs back to back):
a bare Starlette app on uvicorn (uvloop, httptools) that reads each POST's body and answers the
Run's JSON, the same app committing one row to SQLite (WAL, synchronous=NORMAL, as fluxhost's) on a
database thread first, and `fluxhost serve` on its defaults (a worker process) with the bench
engine: requests a second and the server's CPU per request.

    python bench/run_anatomy.py [--runs 2000] [--clients 32] [--seconds 8] [--port 8797]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import psutil

from _server import SLUG, cpu_seconds, serving, wait_for_answer
from serve_load import measure

RUN_ANSWER = {"errors": [], "taskid": "1", "socketaccesstoken": "x" * 30, "result": True}
ROOMY_LIMITS = {f"max_{limit}": "1000000" for limit in (
    "unfinished_tasks_per_key", "unfinished_tasks_per_project", "queued_tasks_per_model")}


def cpu_microseconds(action: Callable[[], object], count: int) -> float:
    """CPU microseconds per call of ``action``, after a warm-up."""
    for _ in range(min(50, count)):
        action()
    started = time.process_time()
    for _ in range(count):
        action()
    return (time.process_time() - started) / count * 1e6


def run_headers(api_key: str, api_secret: str, nonce: str, body: bytes) -> list[tuple[bytes, bytes]]:
    """A signed Run's headers, as uvicorn hands them to the app."""
    from fluxhost.signing import signed_headers

    return [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode(), value.encode())
              for name, value in signed_headers(api_key, api_secret, nonce).items())]


async def signed_run(app, headers: list[tuple[bytes, bytes]], body: bytes, path: str = f"/v1/Run/{SLUG}") -> None:
    """One signed Run through ``app`` at ``path``, as uvicorn would hand it over; raises if it is refused."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 40000)}
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if delivered:
            await asyncio.Event().wait()  # the client stays while its answer is made
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    answer: list[dict] = []

    async def send(message: dict) -> None:
        answer.append(message)

    await app(scope, receive, send)
    if answer[0]["status"] != 200 or json.loads(answer[-1]["body"]).get("result") is not True:
        raise RuntimeError(f"the Run was refused: {answer[-1]['body'][:200]!r}")


def in_process(runs: int) -> None:
    """The whole Run through the app, then each of its steps alone, CPU microseconds each."""
    os.environ.setdefault("FLUXHOST_LOG_LEVEL", "WARNING")
    from starlette.routing import Mount

    from fluxhost.app import create_app
    from fluxhost.http.offload import Offload
    from fluxhost.service import Service
    from fluxhost.settings import Settings
    from fluxhost.signing import KeyMode, signed_headers
    from fluxhost.wiro.schema import InputSchema

    inputs = {"prompt": "a red circle", "seed": "1"}
    body = json.dumps(inputs).encode()
    nonces = (str(nonce) for nonce in itertools.count(time.time_ns() // 1000))
    with tempfile.TemporaryDirectory() as data:
        service = Service(Settings(data_dir=Path(data), engine="bench", worker_concurrency=0, rate_limit_per_minute=0,
                                   **{name: 1_000_000 for name in ROOMY_LIMITS}))
        app = create_app(service)
        key = service.keys.create(KeyMode.SIGNATURE)
        operations = service.operations
        tool = operations.tool(*SLUG.split("/"))
        schema = InputSchema.of(tool, {}, operations.max_prompt_chars)
        signature = signed_headers(key.api_key, key.api_secret, "1")["x-signature"]
        caller = operations.caller(key.api_key, "1", signature)
        asked = schema.parse(inputs, "")

        def queue() -> None:
            operations.run(caller, tool, asked,
                           accept=lambda: operations.auth.spend_nonce(caller, next(nonces), "digest"))

        steps = {
            "its key found and signature checked": lambda: operations.caller(key.api_key, "1", signature),
            "its limits read": lambda: operations.admit(caller, tool),
            "its inputs parsed": lambda: schema.parse(inputs, ""),
            "queued: its nonce and task committed together": queue,
        }

        door = next(route.app for route in app.routes if isinstance(route, Mount) and route.path == "/v1")

        async def whole_runs(target=app, path: str = f"/v1/Run/{SLUG}") -> float:
            signed = [run_headers(key.api_key, key.api_secret, next(nonces), body) for _ in range(50 + runs)]
            for headers in signed[:50]:
                await signed_run(target, headers, body, path)
            started = time.process_time()  # the client's part (signing) done before
            for headers in signed[50:]:
                await signed_run(target, headers, body, path)
            return (time.process_time() - started) / runs * 1e6

        async def on_the_loop(_offload: Offload, function: Callable, *args: object) -> object:
            return function(*args)

        async def timed() -> tuple[float, float, float, dict[str, float]]:
            async with app.router.lifespan_context(app):  # the service started, and stopped after
                whole = await whole_runs()
                through_the_door = await whole_runs(door, f"/Run/{SLUG}")
                with mock.patch.object(Offload, "run", on_the_loop):
                    without_hand_over = await whole_runs()
                return whole, through_the_door, without_hand_over, {
                    name: cpu_microseconds(step, runs) for name, step in steps.items()}

        whole, through_the_door, without_hand_over, parts = asyncio.run(timed())
    print(f"A signed Run in process, one at a time, no sockets ({runs} of each; CPU microseconds):")
    print(f"  {'the whole Run through the app':<46} {whole:7.0f}")
    for name, value in parts.items():
        print(f"  {name:<46} {value:7.0f}")
    rest = whole - sum(parts.values())
    print(f"  {'the rest: framework, door, thread hand-over':<46} {rest:7.0f}  ({rest / whole:.0%} of the Run)")
    print(f"  {'  of which the router, mount and middleware':<46} {whole - through_the_door:7.0f}  (the door "
          f"called straight: {through_the_door:.0f})")
    hand_over = whole - without_hand_over
    print(f"  {'  of which the hand-over to a database thread':<46} {hand_over:7.0f}  (the Run run on the loop: "
          f"{without_hand_over:.0f})")


def bare_app(database: Path | None):
    """A Starlette app answering every POST with a Run's answer; with a ``database`` file, after
    one row is committed to it (SQLite) on a database thread, as fluxhost commits a Run."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    threads = ThreadPoolExecutor(2)
    local = threading.local()
    turns = threading.Lock()

    def connection() -> sqlite3.Connection:
        if getattr(local, "connection", None) is None:
            local.connection = sqlite3.connect(database, isolation_level=None)
            local.connection.execute("PRAGMA journal_mode=WAL")
            local.connection.execute("PRAGMA synchronous=NORMAL")
            local.connection.execute("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, body TEXT)")
        return local.connection

    def keep(body: bytes) -> None:
        with turns:
            database = connection()
            database.execute("BEGIN IMMEDIATE")
            database.execute("INSERT INTO runs (body) VALUES (?)", (body.decode(),))
            database.execute("COMMIT")

    async def run(request: Request) -> JSONResponse:
        body = await request.body()
        if database is not None:
            await asyncio.get_running_loop().run_in_executor(threads, keep, body)
        return JSONResponse(RUN_ANSWER)

    return Starlette(routes=[Route("/{path:path}", run, methods=["POST"])])


def serve_bare(port: int, database: Path | None) -> None:
    import uvicorn

    uvicorn.run(bare_app(database), host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def bare_server(port: int, commit: bool) -> Iterator[psutil.Process]:
    """A bare app's process on ``port``, answering; stopped (killed if it will not stop) after,
    and its database removed (uvicorn ends its process by the signal it got: no cleanup runs there)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise RuntimeError(f"port {port} is taken: choose another with --port") from None
    folder = tempfile.TemporaryDirectory()
    database = ["--database", str(Path(folder.name) / "floor.db")] if commit else []
    process = subprocess.Popen([sys.executable, __file__, "--serve-bare", "--port", str(port), *database])
    try:
        wait_for_answer(f"http://127.0.0.1:{port}", process, 30)
        yield psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        folder.cleanup()


def loaded(base_url: str, key: dict, server: psutil.Process, clients: int, seconds: float) -> tuple[float, float]:
    """Requests a second under ``clients`` closed-loop clients for ``seconds``, and the server's CPU
    milliseconds (its children's included) per request."""
    asyncio.run(measure(base_url, key, clients, 2.0, None))  # connections and caches warm
    before = cpu_seconds(server)
    stats, wall = asyncio.run(measure(base_url, key, clients, seconds, None))
    return len(stats.run) / wall, (cpu_seconds(server) - before) / len(stats.run) * 1000


def over_loopback(port: int, clients: int, seconds: float) -> None:
    print(f"\nOver loopback, {clients} clients sending Runs back to back ({seconds:g} s each):")
    key = {"api_key": "bare", "api_secret": "bare"}  # the bare apps check nothing
    for label, commit in (("bare Starlette answering a Run's JSON", False),
                          ("the same, committing a row to SQLite first", True)):
        with bare_server(port, commit) as server:
            rate, cpu = loaded(f"http://127.0.0.1:{port}", key, server, clients, seconds)
        print(f"  {label:<48} {rate:7.0f}/s   {cpu:5.2f} ms server CPU each")
    with serving(port, engine="bench", **ROOMY_LIMITS) as served:
        rate, cpu = loaded(served.base_url, served.key, psutil.Process(served.process.pid), clients, seconds)
    print(f"  {'fluxhost serve, signed Runs (a worker process)':<48} {rate:7.0f}/s   {cpu:5.2f} ms server CPU each "
          "(the worker's included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--port", type=int, default=8797)
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)  # a bare app's process
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)  # with --serve-bare: commit to it
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.port, args.database)
        return
    in_process(args.runs)
    over_loopback(args.port, args.clients, args.seconds)


if __name__ == "__main__":
    main()
