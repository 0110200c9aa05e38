"""Soak: N concurrent clients (200) for a while (60 s, and on until 10,000 tasks are done) against
`fluxhost serve` with the bench engine, then sockets opened and dropped by the thousand. Fails
(exit status 1) on any error, any task left unfinished, or memory grown past a stated bound.

1. Warm-up: the same clients for 10 s and twice ``--parallel`` sockets, then the baseline: the
   resident memory of the API process and its children (the embedded worker's process by
   default), warm and past the allocator's high-water mark for this much at once.
2. Soak: each client does a signed Run, then Task/Detail every 50 ms until the task ends. An error
   is any HTTP status but 200, any ``result`` not true, any exception or timeout, and any task that
   ends other than completed (``task_postprocess_end`` with ``pexit`` "0"). Prints Run and Detail
   p50/p99, tasks/s and submit-to-done p50/p99, and resident memory as it goes.
3. Socket churn: connections to ``ws://127.0.0.1:PORT/v1`` opened and dropped, ``--parallel`` at a
   time, while a few clients keep tasks running: some drop at once, most follow running tasks
   (``{"type": "task_info", "tasktoken": ...}``) and go mid-task by reset (RST), by a bare close
   (FIN, no closing handshake) or politely; some follow ended tasks, many tasks at once, unknown
   tokens, or send junk.
4. Socket flood: one connection sends ``--flood`` invalid frames (200,000) and reads nothing, as
   a broken or hostile client would; prints the API process's resident memory before and once
   steady after, and whether the server closed the connection. Fails unless the server closed it
   (1008) and the API process grew by at most ``--max-flood-growth-mb`` (8 MB). ``--flood-only``
   runs this phase alone, against a fresh server.
5. Checks: every task this run made is listed by Task/List and has ended (after a bounded wait for
   the queue to drain); the API process's sockets fall back to what they were before the churn,
   and where the service serves /metrics, its open-socket and unfinished-task gauges to zero;
   resident memory (API + children) after the soak, after the churn and at the end has grown by
   at most ``--max-growth-mb`` (64 MB by default) over the warm baseline.

Every request here is made with one key: as for every bench, the server's per-key request rate
limit is lifted (``_server.py``). Loopback only;
every phase is bounded in time, and the server is stopped at the end. Memory is read with psutil
when it is installed, else from /proc (Linux).

    python bench/soak.py [--clients 200] [--seconds 60] [--tasks 10000] [--churn 2000]
                         [--flood 200000] [--flood-only] [--max-growth-mb 64] [--port 8795]
                         [--worker process|thread]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import string
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.frames import Close

from _server import SLUG, Signer, percentile, running_server
from fluxhost.statuses import TERMINAL, Status

try:
    import psutil
except ImportError:  # not a dependency of fluxhost: /proc does
    psutil = None

PROCESS_ERRORS = (OSError, psutil.Error) if psutil else (OSError,)  # the process went away
MB = 1024 * 1024
TASK_SECONDS = 60.0  # a task not ended this long after its Run is an error
SOCKET_SECONDS = 15.0  # the most one churned connection may take
FLOOD_QUIET_SECONDS = 5.0  # a flooded connection this long without a frame is taken as left open
MAX_ERRORS = 1000  # a phase stops early past this many: the server is broken, more adds nothing


# -- what the server's processes hold -------------------------------------------------------------

class ServerProcesses:
    """The `fluxhost serve` process this script started (its only child) and that one's children."""

    def __init__(self) -> None:
        children = [pid for pid in _children(os.getpid()) if "serve" in _cmdline(pid)]
        if len(children) != 1:
            raise RuntimeError(f"expected one `fluxhost serve` child process, found {children}")
        self.api = children[0]

    def rss(self) -> dict[str, float]:
        """Resident MB of each process, labelled: "api", "worker" (the embedded worker's process),
        others by their command line."""
        found: dict[str, float] = {"api": _rss(self.api)}
        for pid in _descendants(self.api):
            cmdline = _cmdline(pid)
            label = "resource tracker" if "resource_tracker" in cmdline else (
                "worker" if "multiprocessing" in cmdline else Path(cmdline.split(" ")[0]).name)
            while label in found:
                label += "'"
            found[label] = _rss(pid)
        return found

    def alive(self) -> bool:
        return Path(f"/proc/{self.api}").exists()

    def sockets(self) -> int:
        """Open socket descriptors of the API process (its listener and every connection)."""
        count = 0
        for fd in Path(f"/proc/{self.api}/fd").iterdir():
            try:
                count += os.readlink(fd).startswith("socket:")
            except OSError:
                pass  # closed while we looked
        return count


def _children(pid: int) -> list[int]:
    if psutil:
        return [child.pid for child in psutil.Process(pid).children()]
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _rss(pid: int) -> float:
    try:
        if psutil:
            return psutil.Process(pid).memory_info().rss / MB
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except PROCESS_ERRORS:
        pass
    return 0.0


def memory_line(rss: dict[str, float]) -> str:
    parts = "  ".join(f"{label} {value:6.1f}" for label, value in rss.items())
    return f"{sum(rss.values()):7.1f} MB  ({parts})"


# -- the HTTP clients -----------------------------------------------------------------------------

class Errors:
    """Errors by kind, with the first example of each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, kind: str, example: str = "") -> None:
        self.counts[kind] += 1
        self.examples.setdefault(kind, example[:300])

    def __len__(self) -> int:
        return sum(self.counts.values())

    def report(self, title: str) -> None:
        print(f"  {title}: {len(self)}")
        for kind, count in self.counts.most_common():
            print(f"    {count:7d}  {kind}   e.g. {self.examples[kind]}")


class Stats:
    def __init__(self) -> None:
        self.run: list[float] = []
        self.detail: list[float] = []
        self.done: list[float] = []  # submit-to-done of each completed task
        self.tokens: list[str] = []  # every task made
        self.live: set[str] = set()  # tasks being followed now
        self.ended = 0  # tasks seen to end, completed or not
        self.completed: list[str] = []  # tasks seen to complete
        self.http: Counter[int] = Counter()  # HTTP statuses seen


async def call(http: aiohttp.ClientSession, path: str, body: dict, signer: Signer, stats: Stats,
               errors: Errors, name: str) -> dict | None:
    """One signed POST: its JSON answer, or None after noting why it is an error."""
    try:
        async with http.post(path, json=body, headers=signer.headers()) as response:
            stats.http[response.status] += 1
            text = await response.text()
            status = response.status
    except (TimeoutError, aiohttp.ClientError) as error:
        errors.add(f"{name}: {type(error).__name__}", str(error))
        return None
    try:
        answer = json.loads(text)
    except ValueError:
        errors.add(f"{name}: HTTP {status}, not JSON", text)
        return None
    if status != 200 or not isinstance(answer, dict) or answer.get("result") is not True:
        errors.add(f"{name}: HTTP {status}, result {answer.get('result') if isinstance(answer, dict) else '?'}",
                   text)
        return None
    return answer


async def one_client(http: aiohttp.ClientSession, signer: Signer, stats: Stats, errors: Errors,
                     stop: Callable[[], bool], poll: float) -> None:
    """Run, then Detail every ``poll`` seconds until the task ends; again until ``stop()``."""
    while not stop():
        submitted = time.perf_counter()
        run = await call(http, f"/v1/Run/{SLUG}", {"prompt": "soak", "seed": str(len(stats.tokens))}, signer,
                         stats, errors, "Run")
        stats.run.append(time.perf_counter() - submitted)
        if run is None:
            await asyncio.sleep(poll)  # an error: no hot loop against a failing server
            continue
        token = run["socketaccesstoken"]
        stats.tokens.append(token)
        stats.live.add(token)
        try:
            while True:
                began = time.perf_counter()
                detail = await call(http, "/v1/Task/Detail", {"tasktoken": token}, signer, stats, errors, "Detail")
                stats.detail.append(time.perf_counter() - began)
                if detail is not None:
                    task = detail["tasklist"][0]
                    if task["status"] in TERMINAL:
                        stats.ended += 1
                        if task["status"] == Status.POSTPROCESS_END and task["pexit"] == "0":
                            stats.done.append(time.perf_counter() - submitted)
                            stats.completed.append(token)
                        else:
                            errors.add(f"task ended {task['status']} pexit {task['pexit']}",
                                       f"{token}: {task.get('debugerror', '')}")
                        break
                if time.perf_counter() - submitted > TASK_SECONDS:
                    errors.add(f"task not ended within {TASK_SECONDS:g} s", token)
                    break
                await asyncio.sleep(poll)
        finally:
            stats.live.discard(token)


def session(base_url: str, clients: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url, connector=aiohttp.TCPConnector(limit=clients),
                                 timeout=aiohttp.ClientTimeout(30))


def report(title: str, stats: Stats, wall: float) -> None:
    ms = 1000
    print(f"\n{title} ({wall:.1f} s)")
    print(f"  Run     {len(stats.run) / wall:8.1f}/s   p50 {percentile(stats.run, .5) * ms:7.2f} ms   "
          f"p99 {percentile(stats.run, .99) * ms:7.2f} ms   ({len(stats.run)})")
    print(f"  Detail  {len(stats.detail) / wall:8.1f}/s   p50 {percentile(stats.detail, .5) * ms:7.2f} ms   "
          f"p99 {percentile(stats.detail, .99) * ms:7.2f} ms   ({len(stats.detail)})")
    print(f"  done    {len(stats.done) / wall:8.1f} tasks/s   submit-to-done p50 "
          f"{percentile(stats.done, .5) * ms:7.2f} ms   p99 {percentile(stats.done, .99) * ms:7.2f} ms   "
          f"({len(stats.done)} completed)")
    print(f"  HTTP statuses: {dict(sorted(stats.http.items()))}")


# -- the socket churn -----------------------------------------------------------------------------

class SocketClosed(Exception):
    def __init__(self, code: int | None):
        super().__init__(f"closed by the server (code {code})")
        self.code = code


class Unexpected(Exception):
    """A socket answered something it should not have."""


class ChurnedSocket:
    """A WebSocket client that can also leave as a crashed client or a lost network does: a reset
    (RST) or a bare close (FIN) of its TCP connection, with no closing handshake."""

    def __init__(self, connection: ClientConnection):
        self.connection = connection

    @classmethod
    async def connect(cls, port: int) -> ChurnedSocket:
        return cls(await connect(f"ws://127.0.0.1:{port}/v1", compression=None, ping_interval=None))

    async def send(self, text: str) -> None:
        await self.connection.send(text)

    async def follow(self, token: str) -> None:
        await self.send(json.dumps({"type": "task_info", "tasktoken": token}))

    async def frame(self) -> dict:
        """The next frame, as JSON; SocketClosed once the server closed."""
        try:
            return json.loads(await self.connection.recv())
        except ConnectionClosed as closed:
            raise SocketClosed(closed.rcvd.code if closed.rcvd else None) from None

    def reset(self) -> None:
        """Leave with a TCP reset."""
        sock = self.connection.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.transport.abort()

    def drop(self) -> None:
        """Leave with a bare FIN: no closing handshake."""
        self.connection.transport.close()

    async def close(self) -> None:
        """Leave politely: the closing handshake, then FIN."""
        await self.connection.close()

    @property
    def open(self) -> bool:
        return not self.connection.transport.is_closing()


# What each churned connection does, and how often.
MODES = {
    "bare": 20,  # opens, sends nothing, leaves
    "running": 45,  # follows 1-3 tasks that are running or queued, reads 0-2 frames, leaves mid-task
    "ended": 10,  # follows an ended task: its final frame at once; leaves politely
    "many": 10,  # follows 20 tasks at once, reads one frame, resets
    "unknown": 10,  # follows a token no task has: an error frame, then the server closes (1008)
    "junk": 5,  # sends a frame that is not task_info: an error frame, the connection stays; leaves
}


def expect_task_frame(frame: dict, tokens: list[str]) -> None:
    if frame.get("result") is not True or frame.get("tasktoken") not in tokens:
        raise Unexpected(f"frame {json.dumps(frame)[:200]}")


async def churn_one(port: int, mode: str, rng: random.Random, running: list[str], ended: list[str]) -> str:
    """One connection in ``mode``; returns how it left."""
    ws = await ChurnedSocket.connect(port)
    leave = rng.choice(("reset", "drop", "close"))
    try:
        if mode == "bare":
            leave = rng.choice(("reset", "drop"))
        elif mode == "running":
            tokens = rng.sample(running or ended, min(len(running or ended), rng.randint(1, 3)))
            for token in tokens:
                await ws.follow(token)
            following = set(tokens)  # tasks not ended yet: an ended one sends nothing more
            for _ in range(rng.randint(0, 2)):
                if not following:
                    break
                frame = await ws.frame()
                expect_task_frame(frame, tokens)
                if frame["type"] in TERMINAL:
                    following.discard(frame["tasktoken"])
        elif mode == "ended":
            token = rng.choice(ended)
            await ws.follow(token)
            frame = await ws.frame()
            expect_task_frame(frame, [token])
            if frame["type"] != Status.POSTPROCESS_END or frame.get("pexit") != "0" or not frame.get("message"):
                raise Unexpected(f"final frame {json.dumps(frame)[:200]}")
            leave = "close"
        elif mode == "many":
            tokens = rng.sample(running, min(len(running), 10)) + rng.sample(ended, min(len(ended), 10))
            for token in tokens:
                await ws.follow(token)
            expect_task_frame(await ws.frame(), tokens)
            leave = "reset"
        elif mode == "unknown":
            await ws.follow("".join(rng.choices(string.ascii_letters + string.digits, k=30)))
            frame = await ws.frame()
            if frame.get("result") is not False or frame["errors"][0]["code"] != 1:
                raise Unexpected(f"for an unknown token: {json.dumps(frame)[:200]}")
            try:
                await ws.frame()
                raise Unexpected("for an unknown token: the connection stayed open")
            except SocketClosed as closed:
                if closed.code != 1008:
                    raise Unexpected(f"for an unknown token: closed with {closed.code}") from None
            leave = "drop"
        elif mode == "junk":
            await ws.send('{"type": "subscribe"}')
            frame = await ws.frame()
            if frame.get("result") is not False:
                raise Unexpected(f"for a junk frame: {json.dumps(frame)[:200]}")
            leave = rng.choice(("reset", "drop"))
        if leave == "close":
            await ws.close()
        elif leave == "drop":
            ws.drop()
        else:
            ws.reset()
        return leave
    finally:
        if ws.open:
            ws.reset()  # after an error or a timeout: nothing is left open here


async def churn(port: int, count: int, parallel: int, running: set[str], ended: list[str], errors: Errors,
                rng: random.Random) -> Counter[str]:
    """``count`` connections, ``parallel`` at a time; how many did what, and left how."""
    gate = asyncio.Semaphore(parallel)
    done: Counter[str] = Counter()

    async def one(mode: str) -> None:
        async with gate:
            try:
                leave = await asyncio.wait_for(churn_one(port, mode, rng, list(running), ended), SOCKET_SECONDS)
                done[f"{mode}/{leave}"] += 1
            except TimeoutError:
                errors.add(f"socket {mode}: no answer within {SOCKET_SECONDS:g} s")
            except (OSError, WebSocketException, SocketClosed, Unexpected, ValueError) as error:
                errors.add(f"socket {mode}: {type(error).__name__}", str(error))

    modes = rng.choices(list(MODES), weights=list(MODES.values()), k=count)
    await asyncio.gather(*(one(mode) for mode in modes))
    return done


# -- the socket flood -----------------------------------------------------------------------------

FLOOD_FRAME = "not json"  # answered with an error frame


@dataclass
class Flood:
    """What one flooding connection did, and the API process's resident MB around it."""

    sent: int = 0  # frames sent before the connection closed (or all of them)
    seconds: float = 0.0  # from the first frame to the last one sent
    cut_short: bool = False  # sending stopped: the connection was closed, or took no frame in time
    rss_before: float = 0.0
    rss_after: float = 0.0  # once steady, with every frame sent and none read
    read: int = 0  # frames read once the sending was over
    close: Close | None = None  # the server's close frame, when one was read


async def steady_rss(server: ServerProcesses, seconds: float = 2.0, at_most: float = 60.0) -> float:
    """The API process's resident MB once it has not grown for ``seconds`` (or after ``at_most``):
    a server still working through frames on the wire is still growing."""
    deadline = time.monotonic() + at_most
    highest, since = _rss(server.api), time.monotonic()
    while time.monotonic() - since < seconds and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        if (now := _rss(server.api)) > highest:
            highest, since = now, time.monotonic()
    return highest


async def flood(port: int, frames: int, server: ServerProcesses) -> Flood:
    """One connection sends ``frames`` invalid frames and reads nothing (the client library stops
    taking frames off the wire past its small queue), then reads what it was sent, to the server's
    close if there is one. Before it, one invalid frame answered on another connection warms the
    code the baseline should hold."""
    warm = await ChurnedSocket.connect(port)
    await warm.send(FLOOD_FRAME)
    await asyncio.wait_for(warm.frame(), SOCKET_SECONDS)
    await warm.close()
    await asyncio.sleep(1)
    result = Flood(rss_before=_rss(server.api))
    ws = await ChurnedSocket.connect(port)
    try:
        started = time.perf_counter()
        try:
            for _ in range(frames):
                await asyncio.wait_for(ws.send(FLOOD_FRAME), SOCKET_SECONDS)
                result.sent += 1
                result.seconds = time.perf_counter() - started
        except (ConnectionClosed, TimeoutError):
            result.cut_short = True
        result.rss_after = await steady_rss(server)
        while True:
            try:
                await asyncio.wait_for(ws.connection.recv(), FLOOD_QUIET_SECONDS)
                result.read += 1
            except ConnectionClosed as closed:
                result.close = closed.rcvd
                break
            except TimeoutError:
                break
    finally:
        if ws.open:
            ws.reset()
    return result


def flood_phase(port: int, args: argparse.Namespace, server: ServerProcesses) -> list[str]:
    """The flood, its figures printed; the failures."""
    print(f"\nsocket flood: {args.flood} invalid frames on one connection that reads nothing")
    result = asyncio.run(flood(port, args.flood, server))
    print(f"  sent {result.sent} in {result.seconds:.1f} s" +
          ("; then the connection took no more (closed)" if result.cut_short else ""))
    growth = result.rss_after - result.rss_before
    print(f"  API process RSS before {result.rss_before:.1f} MB, after {result.rss_after:.1f} MB "
          f"({growth:+.1f} MB; once steady, nothing read yet)")
    if result.close is not None:
        ending = f"the server closed the connection: {result.close.code} ({result.close.reason!r})"
    elif result.cut_short:
        ending = "no close frame came through, but the server ended the connection"
    else:
        ending = f"the server did not close the connection ({FLOOD_QUIET_SECONDS:g} s without a frame)"
    print(f"  then read {result.read} frames; {ending}")
    failures = []
    if result.close is None and not result.cut_short:
        failures.append("the server did not close the flooding connection")
    elif result.close is not None and result.close.code != 1008:
        failures.append(f"the server closed the flooding connection with {result.close.code}, not 1008")
    if growth > args.max_flood_growth_mb:
        failures.append(f"the flood grew the API process by {growth:.1f} MB (bound {args.max_flood_growth_mb:g} MB)")
    return failures

# -- the phases -----------------------------------------------------------------------------------

async def load(base_url: str, key: dict, clients: int, stop: Callable[[], bool], poll: float,
               stats: Stats, errors: Errors) -> float:
    """``clients`` clients until ``stop()``; the wall time."""
    signer = Signer(key)
    started = time.perf_counter()
    async with session(base_url, clients) as http:
        await asyncio.gather(*(one_client(http, signer, stats, errors, stop, poll) for _ in range(clients)))
    return time.perf_counter() - started


async def warm_up(base_url: str, port: int, key: dict, args: argparse.Namespace, errors: Errors) -> Stats:
    """A little of everything the soak does, as many at once as the soak does, so that the baseline
    holds what warm code and the allocator's high-water mark hold, and growth past it is what stays."""
    stats = Stats()
    until = time.perf_counter() + args.warmup
    loading = asyncio.create_task(load(base_url, key, args.clients, lambda: time.perf_counter() > until, args.poll,
                                       stats, errors))
    while stats.ended < 50 and not loading.done():
        await asyncio.sleep(0.05)
    await churn(port, 2 * args.parallel, args.parallel, stats.live, stats.completed[:20], errors, random.Random(0))
    await loading
    await all_tasks(base_url, key)  # pages of 1,000 tasks, as the final check reads them
    return stats


async def soak(base_url: str, key: dict, args: argparse.Namespace, server: ServerProcesses, errors: Errors,
               samples: list[tuple[float, int, float]]) -> tuple[Stats, float]:
    stats = Stats()
    started = time.perf_counter()
    until, hard = started + args.seconds, started + args.max_seconds

    def stop() -> bool:
        now = time.perf_counter()
        return (now >= until and stats.ended >= args.tasks) or now >= hard or len(errors) >= MAX_ERRORS

    async def sample() -> None:
        while not stop():
            await asyncio.sleep(min(10.0, args.seconds / 4))
            rss = server.rss()
            elapsed = time.perf_counter() - started
            samples.append((elapsed, stats.ended, sum(rss.values())))
            print(f"  {elapsed:5.0f} s  {stats.ended:7d} tasks ended  {len(errors):5d} errors  RSS {memory_line(rss)}",
                  flush=True)

    sampler = asyncio.create_task(sample())
    wall = await load(base_url, key, args.clients, stop, args.poll, stats, errors)
    sampler.cancel()
    return stats, wall


async def metrics(base_url: str) -> dict[str, float] | None:
    """The service's socket and unfinished-task gauges from /metrics (``fluxhost_socket_connections``,
    ``fluxhost_tasks{...}``), or None where it serves no such figures."""
    try:
        async with aiohttp.ClientSession(base_url, timeout=aiohttp.ClientTimeout(30)) as http, \
                http.get("/metrics") as response:
            if response.status != 200:
                return None
            text = await response.text()
    except aiohttp.ClientError:
        return None
    found = {}
    for line in text.splitlines():
        if line.startswith(("fluxhost_socket_connections ", "fluxhost_tasks{")):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found if "fluxhost_socket_connections" in found else None


async def churn_phase(base_url: str, port: int, key: dict, args: argparse.Namespace, ended: list[str],
                      server: ServerProcesses, errors: Errors) -> tuple[Counter[str], Stats, float, float | None]:
    """The churn in two halves (resident memory after each: what the first raises and the second
    keeps raising is a leak, not a high-water mark), with a few clients keeping tasks queued and
    running to follow and drop. Returns what the connections did, the feeders' stats, the wall
    time, and the most open sockets the service reported meanwhile (None: it reports none)."""
    feed = Stats()
    churned = False
    peak: float | None = None

    async def watch() -> None:
        nonlocal peak
        while (figures := await metrics(base_url)) is not None:
            peak = max(peak or 0.0, figures["fluxhost_socket_connections"])
            await asyncio.sleep(0.2)

    feeding = asyncio.create_task(load(base_url, key, args.feeders, lambda: churned, args.poll, feed, errors))
    watching = asyncio.create_task(watch())
    while not feed.live and not feeding.done():
        await asyncio.sleep(0.05)
    wall = 0.0
    done: Counter[str] = Counter()
    for half, count in enumerate((args.churn // 2, args.churn - args.churn // 2), 1):
        started = time.perf_counter()
        try:
            done += await asyncio.wait_for(churn(port, count, args.parallel, feed.live, ended, errors,
                                                 random.Random(half)), args.max_seconds / 2)
        except TimeoutError:
            errors.add(f"churn not over within {args.max_seconds / 2:g} s")
        wall += time.perf_counter() - started
        await asyncio.sleep(2)
        print(f"  RSS after {sum(done.values()):5d} {memory_line(server.rss())}", flush=True)
    churned = True
    await feeding
    watching.cancel()
    return done, feed, wall, peak


async def all_tasks(base_url: str, key: dict) -> list[dict]:
    """Every task of the key, oldest first, by pages of 1,000."""
    signer, tasks = Signer(key), []
    async with aiohttp.ClientSession(base_url, timeout=aiohttp.ClientTimeout(120)) as http:
        while True:
            body = {"start": str(len(tasks)), "limit": "1000", "order": "asc"}
            async with http.post("/v1/Task/List", json=body, headers=signer.headers()) as response:
                answer = await response.json()
            if response.status != 200 or answer.get("result") is not True:
                raise RuntimeError(f"Task/List answered HTTP {response.status}: {answer}")
            tasks += answer["tasklist"]
            if not answer["tasklist"] or len(tasks) >= int(answer["total"]):
                return tasks


async def unended_tasks(base_url: str, key: dict, made: list[str], seconds: float, errors: Errors) -> int:
    """Waits (at most ``seconds``) for every task to end; checks that each task made is listed,
    ended, and completed. Returns how many are listed."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            tasks = await all_tasks(base_url, key)
        except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as error:
            errors.add(f"Task/List: {type(error).__name__}", str(error))
            return 0
        unended = [task for task in tasks if task["status"] not in TERMINAL]
        if not unended or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    for task in unended:
        errors.add(f"task left {task['status']} {seconds:g} s after the load stopped", task["socketaccesstoken"])
    listed = {task["socketaccesstoken"] for task in tasks}
    for token in set(made) - listed:
        errors.add("task made but not listed by Task/List", token)
    for task in tasks:
        if task["status"] in TERMINAL and (task["status"] != Status.POSTPROCESS_END or task["pexit"] != "0"):
            errors.add(f"task ended {task['status']} pexit {task['pexit']} (Task/List)", task["socketaccesstoken"])
    return len(tasks)


async def settled_sockets(server: ServerProcesses, at_most: int, seconds: float) -> int:
    """The API process's open sockets once they are down to ``at_most``, or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (count := server.sockets()) > at_most and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    return count


async def settled_metrics(base_url: str, seconds: float) -> dict[str, float] | None:
    """/metrics once it counts no open socket, or after ``seconds``; None where there are none."""
    deadline = time.monotonic() + seconds
    while (figures := await metrics(base_url)) and figures["fluxhost_socket_connections"] and \
            time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0, help="the soak's length (at least)")
    parser.add_argument("--tasks", type=int, default=10_000, help="the soak goes on until this many tasks ended")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="hard bound on the soak phase and on the churn phase")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the baseline")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between a client's Detail polls")
    parser.add_argument("--churn", type=int, default=2000, help="socket connections opened and dropped")
    parser.add_argument("--parallel", type=int, default=200, help="churned connections open at once")
    parser.add_argument("--feeders", type=int, default=20, help="clients keeping tasks running during the churn")
    parser.add_argument("--flood", type=int, default=200_000,
                        help="invalid frames one unread socket sends (0: no flood)")
    parser.add_argument("--flood-only", action="store_true", help="only the socket flood, against a fresh server")
    parser.add_argument("--max-flood-growth-mb", type=float, default=8.0,
                        help="most the API process's resident memory may grow over the socket flood")
    parser.add_argument("--max-growth-mb", type=float, default=64.0,
                        help="most the resident memory of the API and worker processes together may grow "
                             "over the warm baseline: after the soak, after the churn, at the end")
    parser.add_argument("--drain-seconds", type=float, default=60.0,
                        help="how long tasks may take to end once the load stops")
    parser.add_argument("--step-ms", default="0", help="FLUXHOST_BENCH_STEP_MS of the server")
    parser.add_argument("--concurrency", default="1", help="FLUXHOST_WORKER_CONCURRENCY of the server")
    parser.add_argument("--port", type=int, default=8795)
    parser.add_argument("--worker", choices=("process", "thread"), default="process",
                        help="the worker in a child process (the default) or in a thread of the API's process")
    args = parser.parse_args()

    errors, failures = Errors(), []
    samples: list[tuple[float, int, float]] = []
    with running_server(args.port, engine="bench", bench_step_ms=args.step_ms, worker_concurrency=args.concurrency,
                        worker_process=str(args.worker == "process").lower()) as (base_url, key):
        server = ServerProcesses()
        print(f"fluxhost serve (bench engine, {args.step_ms} ms a step, worker: {args.worker}) on {base_url}; "
              f"memory read {'with psutil' if psutil else 'from /proc'}")

        time.sleep(2)
        print(f"  RSS at start    {memory_line(server.rss())}")
        if args.flood_only:
            failures = flood_phase(args.port, args, server)
            print("FAIL: " + "; ".join(failures) if failures else "PASS")
            sys.exit(1 if failures else 0)
        warm = asyncio.run(warm_up(base_url, args.port, key, args, errors))
        time.sleep(2)
        before = server.rss()
        print(f"\nwarm-up: {args.clients} clients for {args.warmup:g} s ({warm.ended} tasks), "
              f"{2 * args.parallel} sockets; {len(errors)} errors")
        print(f"  RSS before      {memory_line(before)}   (the baseline)")

        print(f"\nsoak: {args.clients} clients, at least {args.seconds:g} s and {args.tasks} tasks "
              f"(at most {args.max_seconds:g} s)")
        stats, wall = asyncio.run(soak(base_url, key, args, server, errors, samples))
        report(f"soak: {args.clients} concurrent clients, Run then Detail every {args.poll * 1000:g} ms", stats, wall)
        if len(errors) >= MAX_ERRORS:
            failures.append(f"the soak stopped early, after {len(errors)} errors")
        elif stats.ended < args.tasks:
            failures.append(f"only {stats.ended} tasks ended within {args.max_seconds:g} s (wanted {args.tasks})")
        time.sleep(2)
        after_soak = server.rss()
        sockets_before = server.sockets()
        print(f"  RSS after       {memory_line(after_soak)}")
        print(f"  growth          {sum(after_soak.values()) - sum(before.values()):+7.1f} MB over "
              f"{stats.ended} tasks   (API process sockets now: {sockets_before})")

        print(f"\nsocket churn: {args.churn} connections, {args.parallel} at a time, {args.feeders} clients "
              f"keeping tasks running")
        done, feed, churn_wall, peak = asyncio.run(churn_phase(base_url, args.port, key, args, stats.completed,
                                                              server, errors))
        print(f"  {sum(done.values())} connections in {churn_wall:.1f} s "
              f"({sum(done.values()) / churn_wall:.0f}/s); {feed.ended} tasks ran meanwhile")
        for mode in MODES:
            ways = {way.split("/")[1]: n for way, n in sorted(done.items()) if way.startswith(f"{mode}/")}
            print(f"    {mode:8s} {sum(ways.values()):5d}  {ways}")

        after_churn = server.rss()
        if args.flood:
            failures += flood_phase(args.port, args, server)

        made = warm.tokens + stats.tokens + feed.tokens
        listed = asyncio.run(unended_tasks(base_url, key, made, args.drain_seconds, errors))
        sockets_after = asyncio.run(settled_sockets(server, sockets_before, 10.0))
        figures = asyncio.run(settled_metrics(base_url, 10.0))
        time.sleep(2)
        after_check = server.rss()
        print(f"\nchecks: tasks listed {listed} (made {len(made)}), none left unended unless reported below")
        print(f"  API process sockets {sockets_after} (before the churn {sockets_before})")
        if figures is None:
            print("  the service reports no socket count (/metrics): that check skipped")
        else:
            unfinished = sum(value for name, value in figures.items() if name.startswith("fluxhost_tasks{"))
            print(f"  /metrics: open sockets {figures['fluxhost_socket_connections']:g} "
                  f"(peak seen during the churn {peak or 0:g}), unfinished tasks {unfinished:g}")
            if figures["fluxhost_socket_connections"] != 0:
                failures.append(f"the service still counts {figures['fluxhost_socket_connections']:g} open sockets")
            if unfinished:
                failures.append(f"/metrics still counts {unfinished:g} unfinished tasks")
        print(f"  RSS at the end  {memory_line(after_check)}   (after reading every task back)")
        if not server.alive():
            failures.append("the server process died")

    if sockets_after > sockets_before:
        failures.append(f"{sockets_after - sockets_before} sockets still open in the API process after the churn")
    print(f"\nresident memory (API + worker processes) over the warm baseline of {sum(before.values()):.1f} MB, "
          f"bound {args.max_growth_mb:g} MB:")
    for moment, rss in (("the soak", after_soak), ("the churn", after_churn), ("the checks", after_check)):
        growth = sum(rss.values()) - sum(before.values())
        print(f"  after {moment:10s} {growth:+7.1f} MB")
        if growth > args.max_growth_mb:
            failures.append(f"resident memory grew {growth:.1f} MB by the end of {moment} "
                            f"(bound {args.max_growth_mb:g} MB)")
    if len(samples) >= 2:
        (t0, n0, r0), (t1, n1, r1) = samples[0], samples[-1]
        if n1 > n0:
            print(f"  during the soak: {(r1 - r0) / (n1 - n0) * 1000:+.2f} MB per 1,000 tasks "
                  f"({r0:.1f} MB at {t0:.0f} s, {r1:.1f} MB at {t1:.0f} s)")
    print()
    errors.report("errors")
    if errors:
        failures.append(f"{len(errors)} errors")
    if failures:
        print("FAIL: " + "; ".join(failures))
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main()
