"""Socket fan-out: N subscribers (500 by default) follow one task; for every frame, the time from
the worker publishing the event to the frame arriving at each subscriber. Prints p50/p99/max.

The service runs in this process (so the bench can note when each event is published); the
subscribers run in a child process, as real clients would, on loopback only.

    python bench/socket_fanout.py [--subscribers 500] [--steps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from _server import SLUG, Signer, percentile
from fluxhost.app import UVICORN_OPTIONS, create_app
from fluxhost.service import Service
from fluxhost.settings import ModelSettings, Settings
from fluxhost.signing import KeyMode
from fluxhost.statuses import TERMINAL
from fluxhost.testing.tiny import ensure_tiny_pipeline


async def subscribers(url: str, token: str, count: int) -> None:
    """Child process: ``count`` sockets follow ``token``; prints their arrivals as JSON."""
    import websockets

    arrivals: list[tuple[str, str, float]] = []
    ready = 0

    async def one() -> None:
        nonlocal ready
        async with websockets.connect(url, max_queue=None) as ws:
            await ws.send(json.dumps({"type": "task_info", "tasktoken": token}))
            ready += 1
            while True:
                frame = json.loads(await ws.recv())
                step = frame["message"]["stepCurrent"] if frame["type"] == "task_output" else ""
                arrivals.append((frame["type"], step, time.time()))
                if frame["type"] in TERMINAL:
                    return

    await asyncio.gather(*(one() for _ in range(count)))
    print(json.dumps(arrivals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--port", type=int, default=8797)
    parser.add_argument("--client", nargs=2, metavar=("URL", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(subscribers(*args.client, args.subscribers))
        return

    with tempfile.TemporaryDirectory() as data:
        weights = ensure_tiny_pipeline(Path(data) / "tiny")
        settings = Settings(data_dir=Path(data), port=args.port, torch_threads=1,
                            models={SLUG: ModelSettings(weights=str(weights), steps=args.steps,
                                                        max_sequence_length=32)})
        service = Service(settings)
        followed: list[str] = []
        published: dict[tuple[str, str], float] = {}

        def note(event) -> None:
            if event.token in followed:
                step = str(event.progress.step) if event.progress else ""
                published.setdefault((event.type, step), event.time)

        service.events.subscribe(note)
        server = uvicorn.Server(uvicorn.Config(create_app(service), port=args.port, **UVICORN_OPTIONS))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        signer = Signer(vars(service.keys.create(KeyMode.SIGNATURE)))
        base = f"http://127.0.0.1:{args.port}"
        run = lambda: httpx.post(f"{base}/v1/Run/{SLUG}", json={"prompt": "fan-out", "aspectRatio": "1:1"},  # noqa: E731
                                 headers=signer.headers(), timeout=30).json()
        for _ in range(3):
            run()  # blockers: the followed task stays queued while the subscribers connect
        token = run()["socketaccesstoken"]
        followed.append(token)
        child = subprocess.run(
            [sys.executable, __file__, "--subscribers", str(args.subscribers), "--client",
             f"ws://127.0.0.1:{args.port}/v1", token], capture_output=True, text=True, check=True, timeout=600,
        )
        server.should_exit = True
    arrivals = json.loads(child.stdout)
    latencies = [(at - published[(kind, step)]) * 1000 for kind, step, at in arrivals if (kind, step) in published]
    frames = len({(kind, step) for kind, step, _ in arrivals})
    print(f"{args.subscribers} subscribers, {frames} distinct frames each, {len(latencies)} deliveries timed")
    print(f"  event -> frame   p50 {percentile(latencies, .5):7.2f} ms   p99 {percentile(latencies, .99):7.2f} ms"
          f"   max {max(latencies):7.2f} ms")


if __name__ == "__main__":
    main()
