"""Liveness and readiness: /healthz answers while the process runs; /readyz says 503, with the
reasons, while the database is unreachable or takes no writes, or the workers cannot take tasks."""

import os
import signal
import sqlite3
import time

import httpx
from sqlalchemy.exc import OperationalError

from fluxhost.settings import ModelSettings
from tests.helpers import SLUG, LiveServer


def readiness(live: LiveServer, wanted: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{live.base_url}/readyz", timeout=10)
        if answer.status_code == wanted:
            return answer.json()
        assert time.monotonic() < deadline, f"/readyz still answers {answer.status_code}: {answer.text}"
        time.sleep(0.05)


def test_ready_once_the_models_are_loaded_and_not_while_the_database_is_gone(make_settings, monkeypatch):
    with LiveServer(make_settings()) as live:
        assert httpx.get(f"{live.base_url}/healthz", timeout=10).json() == {"status": "ok"}
        assert readiness(live, 200) == {"status": "ready"}

        def unreachable() -> None:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

        monkeypatch.setattr(live.service.db, "ping", unreachable)
        assert readiness(live, 503)["reasons"] == ["the database cannot be reached (OperationalError)"]
        assert httpx.get(f"{live.base_url}/healthz", timeout=10).status_code == 200  # alive all the same


def test_not_ready_while_the_database_takes_no_writes(make_settings, monkeypatch):
    with LiveServer(make_settings(engine="bench", worker_concurrency=0)) as live:
        assert readiness(live, 200) == {"status": "ready"}

        def full_disk() -> None:
            raise OperationalError("UPDATE", {}, sqlite3.OperationalError("database or disk is full"))

        monkeypatch.setattr(live.service.db, "write", full_disk)  # reads still answer
        assert readiness(live, 503, timeout=10)["reasons"] == ["the database takes no writes (OperationalError)"]
        monkeypatch.undo()
        assert readiness(live, 200) == {"status": "ready"}


def test_not_ready_when_no_model_could_be_loaded(make_settings, tmp_path):
    models = {SLUG: ModelSettings(weights=str(tmp_path / "missing"))}
    with LiveServer(make_settings(models=models)) as live:
        assert readiness(live, 503)["reasons"] == ["no model could be loaded (see the log)"]


def test_not_ready_when_none_of_the_models_the_worker_process_works_on_could_be_loaded(make_settings, tmp_path):
    """The worker process loads only the kinds it works on: the others, never loaded nor failed,
    made it look as if some model could run."""
    from types import SimpleNamespace

    from fluxhost.events import LocalEventBus
    from fluxhost.runtime.dispatch.child import ChildProcessDispatcher

    models = {SLUG: ModelSettings(weights=str(tmp_path / "missing")),
              "acme/trainer": ModelSettings(weights=str(tmp_path / "missing"), kind="train")}
    for kinds, reason in (("text-to-image", "no model could be loaded (see the log)"), ("", None)):
        settings = make_settings(models=models, worker_process=True, worker_kinds=kinds)
        dispatcher = ChildProcessDispatcher(settings, "host-1-abcdef", models, LocalEventBus(), on_lost=lambda: None)
        dispatcher._process = SimpleNamespace(is_alive=lambda: True)  # a child that reported its models:
        dispatcher._loaded.set()
        dispatcher.load_errors = {SLUG: "the weights could not be loaded"}  # this one failed
        assert dispatcher.not_ready() == reason  # working on every kind, the trainer loaded: ready


def test_not_ready_while_the_worker_process_is_restarted(make_settings):
    with LiveServer(make_settings(worker_process=True, engine="bench")) as live:
        readiness(live, 200)
        os.kill(live.service.dispatcher.pid, signal.SIGKILL)
        reasons = readiness(live, 503)["reasons"]
        assert reasons[0].startswith(("the worker process is not running", "the worker is loading"))
        readiness(live, 200)
