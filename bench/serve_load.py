"""Load on the whole service, engine cost removed: N concurrent clients do signed Run then Detail
polling against `fluxhost serve` with the bench engine (a small solid-colour PNG per task).

Prints Run/s, Detail/s, their p50/p99 latency, and completed tasks/s with submit-to-done p50/p99;
then the same for one client doing one task at a time (polling back to back, polling every 2 ms,
and following each task on the socket). Loopback only; bounded in time.

    python bench/serve_load.py [--clients 32] [--seconds 10] [--port 8799] [--worker process|thread]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from _server import SLUG, Signer, percentile, running_server
from fluxhost.statuses import TERMINAL


class Stats:
    def __init__(self) -> None:
        self.run: list[float] = []
        self.detail: list[float] = []
        self.done: list[float] = []


async def post(http: aiohttp.ClientSession, path: str, body: dict, signer: Signer) -> dict:
    async with http.post(path, json=body, headers=signer.headers()) as response:
        return await response.json()


async def one_client(http: aiohttp.ClientSession, signer: Signer, stats: Stats, until: float, poll: float) -> None:
    while time.perf_counter() < until:
        submitted = time.perf_counter()
        run = await post(http, f"/v1/Run/{SLUG}", {"prompt": "load", "seed": "1"}, signer)
        stats.run.append(time.perf_counter() - submitted)
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


async def measure(base_url: str, key: dict, clients: int, seconds: float, poll: float) -> tuple[Stats, float]:
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
    print(f"  done    {len(stats.done) / wall:8.1f} tasks/s   submit-to-done p50 "
          f"{percentile(stats.done, .5) * ms:6.2f} ms   p99 {percentile(stats.done, .99) * ms:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--concurrency", default="1", help="FLUXHOST_WORKER_CONCURRENCY of the server")
    parser.add_argument("--worker", choices=("process", "thread"), default="process",
                        help="the worker in a child process (the default) or in a thread of the API's process")
    args = parser.parse_args()
    with running_server(args.port, engine="bench", worker_concurrency=args.concurrency,
                        worker_process=str(args.worker == "process").lower()) as (base_url, key):
        asyncio.run(measure(base_url, key, 2, 1.0, 0))  # warm up connections and caches
        stats, wall = asyncio.run(measure(base_url, key, args.clients, args.seconds, poll=0.05))
        report(f"{args.clients} concurrent clients, Run then Detail every 50 ms", stats, wall)
        for poll in (0, 0.002):
            stats, wall = asyncio.run(measure(base_url, key, 1, args.seconds, poll=poll))
            report(f"1 client, one task at a time, Detail every {poll * 1000:g} ms", stats, wall)
        stats, wall = asyncio.run(one_client_by_socket(base_url, key, args.seconds))
        report("1 client, one task at a time, following each on the socket (no Detail)", stats, wall)


if __name__ == "__main__":
    main()
