"""Shared by the bench scripts: a throwaway `fluxhost serve` on loopback, and signed requests."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from fluxhost.signing import signed_headers
from fluxhost.statuses import TERMINAL

FLUXHOST = str(Path(sys.executable).with_name("fluxhost"))
SLUG = "black-forest-labs/flux-pro-1.1"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def server_environment(settings: dict[str, str]) -> dict[str, str]:
    """The server's environment: quiet, and without the per-key request rate limit (a bench makes
    all its requests with one key, and measures the service, not that policy)."""
    return {**os.environ, "FLUXHOST_LOG_LEVEL": "WARNING", "FLUXHOST_RATE_LIMIT_PER_MINUTE": "0",
            **{f"FLUXHOST_{k.upper()}": v for k, v in settings.items()}}


def create_key(env: dict[str, str]) -> dict:
    """A new signature key of the server ``env`` configures, as `fluxhost keys create --json` prints it."""
    return json.loads(subprocess.run([FLUXHOST, "keys", "create", "--json"], env=env, check=True,
                                     capture_output=True, text=True).stdout)


def cpu_seconds(root: psutil.Process, with_root: bool = True) -> float:
    """User and system CPU seconds so far of ``root``'s children, all the way down, and of
    ``root`` itself unless told not (a process gone meanwhile is left out)."""
    total = 0.0
    for member in ((root,) if with_root else ()) + tuple(root.children(recursive=True)):
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@dataclass(frozen=True)
class Served:
    """A running `fluxhost serve`: where it answers, a signature key for it, and its process."""

    base_url: str
    key: dict
    process: subprocess.Popen


def wait_for_answer(url: str, process: subprocess.Popen, seconds: float) -> None:
    """Until a POST to ``url`` gets an answer (any status); raises if ``process`` ends first or
    ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.post(url, timeout=2)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"nothing answered at {url}") from None
            time.sleep(0.1)


@contextmanager
def serving(port: int, python_path: str | None = None, **settings: str) -> Iterator[Served]:
    """Start `fluxhost serve` with these FLUXHOST_* settings (``python_path``: put first on its
    PYTHONPATH, to serve another checkout's ``src``); stopped on the way out."""
    with tempfile.TemporaryDirectory() as data:
        env = server_environment({"data_dir": data, "port": str(port), **settings})
        if python_path:
            env["PYTHONPATH"] = python_path
        key = create_key(env)
        process = subprocess.Popen([FLUXHOST, "serve"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_for_answer(f"{base_url}/v1/Tool/List", process, 120)
            yield Served(base_url, key, process)
        finally:
            process.terminate()
            process.wait(30)


@contextmanager
def running_server(port: int, **settings: str) -> Iterator[tuple[str, dict]]:
    """Start `fluxhost serve` with these FLUXHOST_* settings; yield (base_url, key dict)."""
    with serving(port, **settings) as served:
        yield served.base_url, served.key


class Signer:
    """Fresh signed headers per call: nonces unique even within one millisecond."""

    def __init__(self, key: dict):
        self.api_key, self.api_secret = key["api_key"], key["api_secret"]
        self._nonces = itertools.count(time.time_ns() // 1000)

    def headers(self) -> dict[str, str]:
        return signed_headers(self.api_key, self.api_secret, str(next(self._nonces)))


def wait_for_task(http: httpx.Client, signer: Signer, token: str, poll_seconds: float) -> dict:
    """Poll Task/Detail every ``poll_seconds`` until the task ends; its detail (it must have
    completed)."""
    while True:
        task = http.post("/v1/Task/Detail", json={"tasktoken": token}, headers=signer.headers()).json()["tasklist"][0]
        if task["status"] in TERMINAL:
            assert task["pexit"] == "0", task["debugerror"]
            return task
        time.sleep(poll_seconds)
