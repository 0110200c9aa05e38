"""Load on the whole service, engine cost removed: N concurrent clients do signed Runs back to back
(the Run throughput: tasks pile up in the queue), then signed Run then Detail polling, against
`fluxhost serve` with the bench engine (a small solid-colour PNG per task).

Prints Run/s, Detail/s, their p50/p99 latency, and completed tasks/s with submit-to-done p50/p99;
then the same for one client doing one task at a time (polling back to back, polling every 2 ms,
and following each task on the socket). Loopback only; bounded in time. The limits on unfinished
tasks are raised so that a queue of Runs-only load fits under them: they are still checked.

With --against SRC, instead: this checkout's fluxhost side by side with another's (SRC: its `src`
folder, first on that server's PYTHONPATH; e.g. `git worktree add /tmp/old v1` then
`--against /tmp/old/src`), both serving at once. Rounds of short bursts of Runs back to back
(or, with --detail-every MS, of Runs each polled until done; with --callbacks, of Runs each
waited for until its callback arrives), alternating which server takes them, each burst followed
by its server's queue draining; per server, the median Runs/s (tasks done/s) and the median
server CPU (API and worker processes, the drain included) per task, and the medians of the
per-round ratios. The VM's speed drifts by a third over minutes: bursts
seconds apart see the same machine, where whole runs minutes apart do not.

With --cog, instead: fluxhost side by side with Cog's HTTP server (cog==0.16.12, from PyPI into a
throwaway venv, serving a predictor with no model that returns a 64x64 solid-colour PNG), one
client doing one task at a time against each, one system after the other. Three styles: told
when done (fluxhost's callbackUrl, Cog's respond-async webhook, both to a receiver in this
process), asking until done (Task/Detail back to back) and one request answered when the task
ends (fluxhost's OpenAI door with the PNG inline), the last two each beside Cog's synchronous POST
/predictions. Prints tasks/s, submit-to-done p50/p99 and the ratio fluxhost/Cog of tasks/s per
style.

    python bench/serve_load.py [--clients 32] [--seconds 10] [--port 8799] [--worker process|thread]
    python bench/serve_load.py --against SRC [--rounds 12] [--burst 2] [--clients 32] [--detail-every MS | --callbacks]
    python bench/serve_load.py --cog [--cog-venv PATH] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
import httpx
import psutil
from aiohttp import web

from _server import SLUG, Served, Signer, cpu_seconds, percentile, running_server, serving
from fluxhost.statuses import TERMINAL

COG_REQUIREMENT = "cog==0.16.12"
COG_YAML = 'predict: "predict.py:Predictor"\n'
COG_PREDICTOR = '''"""No model: a 64x64 solid-colour PNG per prediction, as fluxhost's bench engine makes."""
import struct
import zlib

from cog import BasePredictor, Path

SIZE = 64


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def solid_png(colour: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)  # 8-bit RGB
    rows = (b"\\0" + colour * SIZE) * SIZE  # each row: filter type 0, then its pixels
    signature = b"\\x89PNG\\r\\n\\x1a\\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class Predictor(BasePredictor):
    def predict(self, prompt: str, seed: int) -> Path:
        output = Path(__file__).with_name("output.png")
        output.write_bytes(solid_png(bytes((seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF))))
        return output
'''
COG_INPUT = {"prompt": "load", "seed": 1}
DONE_TIMEOUT_SECONDS = 30  # one task's wait for its webhook or callback
DRAINED_CORES = 0.1  # a server using less of a core than this has worked through its queue
DRAIN_SAMPLE_SECONDS = 0.2
DRAIN_TIMEOUT_SECONDS = 30


class Stats:
    def __init__(self) -> None:
        self.run: list[float] = []
        self.detail: list[float] = []
        self.done: list[float] = []
        self.busy = 0  # submissions answered 409 (busy) and sent again


async def post(http: aiohttp.ClientSession, path: str, body: dict, signer: Signer) -> dict:
    async with http.post(path, json=body, headers=signer.headers()) as response:
        return await response.json()


async def one_client(http: aiohttp.ClientSession, signer: Signer, stats: Stats, until: float,
                     poll: float | None) -> None:
    """Runs one after another, each followed by Task/Detail every ``poll`` seconds until its task
    ends; with ``poll`` None, Runs back to back, not waiting for their tasks."""
    while time.perf_counter() < until:
        submitted = time.perf_counter()
        run = await post(http, f"/v1/Run/{SLUG}", {"prompt": "load", "seed": "1"}, signer)
        assert run["result"], run["errors"]
        stats.run.append(time.perf_counter() - submitted)
        if poll is None:
            continue
        token = run["socketaccesstoken"]
        while True:
            began = time.perf_counter()
            detail = await post(http, "/v1/Task/Detail", {"tasktoken": token}, signer)
            stats.detail.append(time.perf_counter() - began)
            if detail["tasklist"][0]["status"] in TERMINAL:
                stats.done.append(time.perf_counter() - submitted)
                break
            if poll:
                await asyncio.sleep(poll)


async def one_client_by_socket(base_url: str, key: dict, seconds: float) -> tuple[Stats, float]:
    """One client, one task at a time, following each task on one socket instead of polling."""
    stats = Stats()
    signer = Signer(key)
    async with aiohttp.ClientSession(base_url) as http, http.ws_connect("/v1") as ws:
        started = time.perf_counter()
        while time.perf_counter() < started + seconds:
            submitted = time.perf_counter()
            run = await post(http, f"/v1/Run/{SLUG}", {"prompt": "load", "seed": "1"}, signer)
            stats.run.append(time.perf_counter() - submitted)
            await ws.send_json({"type": "task_info", "tasktoken": run["socketaccesstoken"]})
            while (await ws.receive_json())["type"] not in TERMINAL:
                pass
            stats.done.append(time.perf_counter() - submitted)
        return stats, time.perf_counter() - started


async def measure(base_url: str, key: dict, clients: int, seconds: float,
                  poll: float | None) -> tuple[Stats, float]:
    """``clients`` concurrent :func:`one_client` loops for ``seconds``."""
    stats = Stats()
    signer = Signer(key)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=aiohttp.ClientTimeout(30)) as http:
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(one_client(http, signer, stats, until, poll) for _ in range(clients)))
        return stats, time.perf_counter() - started


def report(title: str, stats: Stats, wall: float) -> None:
    ms = 1000
    print(f"\n{title} ({wall:.1f} s)")
    print(f"  Run     {len(stats.run) / wall:8.1f}/s   p50 {percentile(stats.run, .5) * ms:6.2f} ms   "
          f"p99 {percentile(stats.run, .99) * ms:6.2f} ms")
    if stats.detail:
        print(f"  Detail  {len(stats.detail) / wall:8.1f}/s   p50 {percentile(stats.detail, .5) * ms:6.2f} ms   "
              f"p99 {percentile(stats.detail, .99) * ms:6.2f} ms")
    if not stats.done:
        return
    print(f"  done    {len(stats.done) / wall:8.1f} tasks/s   submit-to-done p50 "
          f"{percentile(stats.done, .5) * ms:6.2f} ms   p99 {percentile(stats.done, .99) * ms:6.2f} ms")


class DoneReceiver:
    """Where webhooks and callbacks land: each task gets its own URL, ``/done/<n>``, and the POST to
    it resolves that task's future with the POST's body."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._waiting: dict[str, asyncio.Future[dict]] = {}
        self._numbers = itertools.count()

    def expect(self) -> tuple[str, asyncio.Future[dict]]:
        name = str(next(self._numbers))
        self._waiting[name] = asyncio.get_running_loop().create_future()
        return f"{self.base_url}/done/{name}", self._waiting[name]

    async def receive(self, request: web.Request) -> web.Response:
        waiting = self._waiting.pop(request.match_info["name"], None)
        if waiting is not None:
            waiting.set_result(await request.json())
        return web.Response()


@asynccontextmanager
async def receiving() -> AsyncIterator[DoneReceiver]:
    """A :class:`DoneReceiver` serving on a free loopback port for the block's length."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        receiver = DoneReceiver(f"http://127.0.0.1:{listener.getsockname()[1]}")
        app = web.Application()
        app.router.add_post("/done/{name}", receiver.receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, listener).start()
            yield receiver
        finally:
            await runner.cleanup()


async def one_at_a_time(seconds: float, follow_one: Callable[[], Awaitable[None]],
                        stats: Stats | None = None) -> tuple[Stats, float]:
    """``follow_one`` submits one task and returns when it is done: back to back for ``seconds``."""
    stats = stats or Stats()
    started = time.perf_counter()
    while time.perf_counter() < started + seconds:
        submitted = time.perf_counter()
        await follow_one()
        stats.done.append(time.perf_counter() - submitted)
    return stats, time.perf_counter() - started


async def fluxhost_by_callback(base_url: str, key: dict, seconds: float, clients: int = 1) -> tuple[Stats, float]:
    """``clients`` concurrent clients, each doing one task at a time: a Run with a callbackUrl,
    then waiting for its callback."""
    signer = Signer(key)
    stats = Stats()
    connector = aiohttp.TCPConnector(limit=clients)
    async with receiving() as receiver, aiohttp.ClientSession(base_url, connector=connector) as http:
        async def follow_one() -> None:
            url, done = receiver.expect()
            run = await post(http, f"/v1/Run/{SLUG}", {"prompt": "load", "seed": "1", "callbackUrl": url}, signer)
            assert run["result"], run["errors"]
            task = (await asyncio.wait_for(done, DONE_TIMEOUT_SECONDS))["tasklist"][0]
            assert task["pexit"] == "0", task["debugerror"]

        started = time.perf_counter()
        await asyncio.gather(*(one_at_a_time(seconds, follow_one, stats) for _ in range(clients)))
        return stats, time.perf_counter() - started


async def fluxhost_synchronously(base_url: str, key: dict, seconds: float) -> tuple[Stats, float]:
    """One request a task, answered when it ends: fluxhost's OpenAI door, the PNG inline (as Cog's
    synchronous answer has it)."""
    token = f"{key['api_key']}:{key['api_secret']}"
    body = {"prompt": "load", "model": SLUG, "response_format": "b64_json"}
    async with aiohttp.ClientSession(base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        async def follow_one() -> None:
            async with http.post("/openai/v1/images/generations", json=body) as response:
                answer = await response.json()
                assert response.status == 200 and answer["data"][0]["b64_json"], answer

        return await one_at_a_time(seconds, follow_one)


def check_cog(prediction: dict) -> None:
    assert prediction["status"] == "succeeded", prediction


async def cog_by_webhook(base_url: str, seconds: float) -> tuple[Stats, float]:
    """Cog may send the webhook before it is ready for the next prediction, and answers a POST in
    between 409 (busy): such a POST is sent again 1 ms later, inside that task's time.

    The webhook's output is the PNG's path on Cog's machine (there is no --upload-url to PUT it
    to); the synchronous answer's is the PNG itself, as a data URI."""
    stats = Stats()
    async with receiving() as receiver, aiohttp.ClientSession(base_url) as http:
        async def follow_one() -> None:
            url, done = receiver.expect()
            body = {"input": COG_INPUT, "webhook": url, "webhook_events_filter": ["completed"]}
            while True:
                async with http.post("/predictions", json=body, headers={"Prefer": "respond-async"}) as response:
                    if response.status != 409:
                        response.raise_for_status()
                        break
                stats.busy += 1
                await asyncio.sleep(0.001)
            check_cog(await asyncio.wait_for(done, DONE_TIMEOUT_SECONDS))

        return await one_at_a_time(seconds, follow_one, stats)


async def cog_synchronously(base_url: str, seconds: float) -> tuple[Stats, float]:
    async with aiohttp.ClientSession(base_url) as http:
        async def follow_one() -> None:
            async with http.post("/predictions", json={"input": COG_INPUT}) as response:
                check_cog(await response.json())

        return await one_at_a_time(seconds, follow_one)


def cog_python(venv: Path) -> Path:
    """The Python of ``venv``, where Cog is installed: made and installed now if it is missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing {COG_REQUIREMENT} into {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        COG_REQUIREMENT], check=True, timeout=600)
    return python


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_cog(python: Path, folder: Path) -> Iterator[str]:
    """Cog's HTTP server, run as a Cog image runs it but without Docker, serving
    :data:`COG_PREDICTOR` from ``folder`` (it reads cog.yaml from its working directory) on a free
    loopback port; yields its base URL once its health check says READY.

    It runs in a session of its own, so that a Ctrl-C here reaches this script only, which then
    stops it: SIGTERM, then SIGKILL to its whole process group (its worker too) if that is slow."""
    (folder / "cog.yaml").write_text(COG_YAML)
    (folder / "predict.py").write_text(COG_PREDICTOR)
    port = free_port()
    log = folder / "server.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen([str(python), "-m", "cog.server.http", "--host", "127.0.0.1"], cwd=folder,
                                   env={**os.environ, "PORT": str(port), "COG_LOG_LEVEL": "warning"},
                                   stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not cog_is_ready(base_url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"Cog's server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cog_is_ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health-check", timeout=2).json()["status"] == "READY"
    except httpx.TransportError:
        return False


def warmed_up(measure_for: Callable[[float], Awaitable[tuple[Stats, float]]], seconds: float) -> tuple[Stats, float]:
    """``measure_for(seconds)``, after a second of the same left out (connections, imports, caches)."""
    asyncio.run(measure_for(1.0))
    return asyncio.run(measure_for(seconds))


def compare_with_cog(args: argparse.Namespace, settings: dict[str, str]) -> None:
    """fluxhost in its three styles, then Cog in its two; the callback guard lets this bench's
    receiver in."""
    with tempfile.TemporaryDirectory(prefix="fluxhost-cog-bench-") as scratch:
        python = cog_python(args.cog_venv or Path(scratch, "venv"))
        with running_server(args.port, callback_allowlist="127.0.0.1", **settings) as (base_url, key):
            fluxhost = (warmed_up(lambda seconds: fluxhost_by_callback(base_url, key, seconds), args.seconds),
                        warmed_up(lambda seconds: measure(base_url, key, 1, seconds, poll=0), args.seconds),
                        warmed_up(lambda seconds: fluxhost_synchronously(base_url, key, seconds), args.seconds))
        with running_cog(python, Path(scratch)) as cog_url:
            synchronous = warmed_up(lambda seconds: cog_synchronously(cog_url, seconds), args.seconds)
            cog = (warmed_up(lambda seconds: cog_by_webhook(cog_url, seconds), args.seconds), synchronous, synchronous)
    print(f"\n1 client, one task at a time, {args.seconds:g} s each; fluxhost then {COG_REQUIREMENT}")
    print(f"{'':51}tasks/s   submit-to-done p50      p99")
    styles = (("callback", "Run with callbackUrl", "POST, respond-async, webhook"),
              ("polling", "Run, then Task/Detail back to back", "synchronous POST /predictions"),
              ("synchronous", "OpenAI door, POST images/generations", "synchronous POST /predictions"))
    for (style, fluxhost_way, cog_way), fluxhost_result, cog_result in zip(styles, fluxhost, cog, strict=True):
        print(style)
        fluxhost_rate = report_row("fluxhost", fluxhost_way, *fluxhost_result)
        cog_rate = report_row("Cog", cog_way, *cog_result)
        print(f"  fluxhost/Cog tasks/s {fluxhost_rate / cog_rate:.2f}")


def report_row(system: str, way: str, stats: Stats, wall: float) -> float:
    """Print one system's line of the side-by-side table; its tasks/s."""
    ms = 1000
    rate = len(stats.done) / wall
    busy = f"   ({stats.busy} POSTs answered 409 busy, sent again)" if stats.busy else ""
    print(f"  {system:9}{way:38}{rate:8.1f}   {percentile(stats.done, .5) * ms:12.2f} ms "
          f"{percentile(stats.done, .99) * ms:8.2f} ms{busy}")
    return rate


def server_cpu_seconds(process: subprocess.Popen) -> float:
    """CPU seconds so far of a server's process and its children (the worker process)."""
    return cpu_seconds(psutil.Process(process.pid))


def wait_until_drained(process: subprocess.Popen) -> None:
    """Until the server is about idle: its worker has taken its queue to the end."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        before = server_cpu_seconds(process)
        time.sleep(DRAIN_SAMPLE_SECONDS)
        if server_cpu_seconds(process) - before < DRAINED_CORES * DRAIN_SAMPLE_SECONDS:
            return


def compare_with_checkout(args: argparse.Namespace, settings: dict[str, str]) -> None:
    """This checkout and ``args.against``, serving at once, in alternating bursts (see the module
    docstring); prints each one's medians and the medians of the per-round ratios."""
    ours = str(Path(__file__).resolve().parents[1] / "src")
    poll = None if args.detail_every is None else args.detail_every / 1000
    counts_runs = poll is None and not args.callbacks  # Runs answered; else tasks done
    if args.callbacks:
        settings = {**settings, "callback_allowlist": "127.0.0.1"}
        load = "each a Run with a callbackUrl, waiting for its callback"
    elif poll is None:
        load = "Runs back to back"
    else:
        load = f"Run then Detail every {args.detail_every:g} ms"
    unit = "Runs/s" if counts_runs else "done/s"

    def burst(served: Served) -> tuple[Stats, float]:
        if args.callbacks:
            return asyncio.run(fluxhost_by_callback(served.base_url, served.key, args.burst, args.clients))
        return asyncio.run(measure(served.base_url, served.key, args.clients, args.burst, poll=poll))

    names = ("this checkout", str(args.against))
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(serving(args.port + number, python_path=path, **settings))
                   for number, (name, path) in enumerate(zip(names, (ours, str(args.against)), strict=True))}
        for served in servers.values():
            asyncio.run(measure(served.base_url, served.key, 2, 1.0, poll=0))  # warm up connections and caches
            wait_until_drained(served.process)
        for round_number in range(args.rounds):
            for name in names if round_number % 2 == 0 else names[::-1]:
                served = servers[name]
                before = server_cpu_seconds(served.process)
                stats, wall = burst(served)
                wait_until_drained(served.process)
                tasks = len(stats.run) if counts_runs else len(stats.done)
                rates[name].append(tasks / wall)
                cpu[name].append((server_cpu_seconds(served.process) - before) / tasks)
    print(f"\n{args.clients} clients, {load}, {args.rounds} rounds of {args.burst:g} s bursts, alternating")
    print(f"{'':50} {unit}   server CPU ms/task (medians)")
    for name in names:
        print(f"  {name:48}{statistics.median(rates[name]):7.1f}   {statistics.median(cpu[name]) * 1000:8.2f}")
    ours_name, theirs = names
    rate_ratio = statistics.median(a / b for a, b in zip(rates[ours_name], rates[theirs], strict=True))
    cpu_ratio = statistics.median(a / b for a, b in zip(cpu[ours_name], cpu[theirs], strict=True))
    print(f"  this checkout / the other, median of per-round ratios: {unit} {rate_ratio:.2f}x, "
          f"CPU per task {cpu_ratio:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--concurrency", default="1", help="FLUXHOST_WORKER_CONCURRENCY of the server")
    parser.add_argument("--worker", choices=("process", "thread"), default="process",
                        help="the worker in a child process (the default) or in a thread of the API's process")
    parser.add_argument("--against", type=Path,
                        help="instead: side by side with another checkout's fluxhost (its src folder), in bursts")
    parser.add_argument("--rounds", type=int, default=12, help="with --against: bursts per server")
    parser.add_argument("--burst", type=float, default=2.0, help="with --against: seconds per burst")
    parser.add_argument("--detail-every", type=float, metavar="MS",
                        help="with --against: each client polls its task (Task/Detail) this often until it ends, "
                        "instead of sending Runs back to back; compares tasks done per second")
    parser.add_argument("--callbacks", action="store_true",
                        help="with --against: each client does a Run with a callbackUrl and waits for its callback "
                        "(to a receiver in this process); compares tasks done per second")
    parser.add_argument("--cog", action="store_true",
                        help="instead: fluxhost side by side with Cog's HTTP server, one task at a time")
    parser.add_argument("--cog-venv", type=Path,
                        help="with --cog: this venv's Cog (installed there first if the venv is missing), "
                        "not a throwaway one's")
    args = parser.parse_args()
    settings = {"engine": "bench", "worker_concurrency": args.concurrency,
                "worker_process": str(args.worker == "process").lower()}
    if args.cog:
        compare_with_cog(args, settings)
        return
    roomy_limits = {f"max_{limit}": "1000000" for limit in (
        "unfinished_tasks_per_key", "unfinished_tasks_per_project", "queued_tasks_per_model")}
    if args.against:
        compare_with_checkout(args, {**settings, **roomy_limits})
        return
    with running_server(args.port, **settings, **roomy_limits) as (base_url, key):
        asyncio.run(measure(base_url, key, 2, 1.0, poll=0))  # warm up connections and caches
        stats, wall = asyncio.run(measure(base_url, key, args.clients, args.seconds, poll=0.05))
        report(f"{args.clients} concurrent clients, Run then Detail every 50 ms", stats, wall)
        for poll in (0, 0.002):
            stats, wall = asyncio.run(measure(base_url, key, 1, args.seconds, poll=poll))
            report(f"1 client, one task at a time, Detail every {poll * 1000:g} ms", stats, wall)
        stats, wall = asyncio.run(one_client_by_socket(base_url, key, args.seconds))
        report("1 client, one task at a time, following each on the socket (no Detail)", stats, wall)
        # last: Runs back to back fill the queue
        stats, wall = asyncio.run(measure(base_url, key, args.clients, args.seconds, poll=None))
        report(f"{args.clients} concurrent clients, Runs back to back", stats, wall)


if __name__ == "__main__":
    main()
