"""SIGTERM as a service manager sends it to `fluxhost serve`: no new Runs, running tasks finish
within the grace period, what is still running then is queued again, and the exit status is 0."""

import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from fluxhost.store.database import Database
from fluxhost.store.keys import NewKey
from fluxhost.store.tasks import TaskStore
from tests.helpers import FLUXHOST, SLUG, ProtocolClient, ServiceProcess, free_port, stop_all, wait_until_ready

pytestmark = pytest.mark.slow  # `fluxhost serve` processes, signalled
STEP_MS = 50


@pytest.fixture
def serve(tmp_path):
    """Start `fluxhost serve` (bench engine, the worker in its child process) with a grace period;
    returns (process, client, task store) and stops what it started."""
    started: list[ServiceProcess] = []
    port = free_port()
    env = {"FLUXHOST_DATA_DIR": str(tmp_path / "data"), "FLUXHOST_PORT": str(port), "FLUXHOST_ENGINE": "bench",
           "FLUXHOST_BENCH_STEP_MS": str(STEP_MS),
           "FLUXHOST_MODELS": json.dumps({SLUG: {"steps": 4, "max_batch": 1, "exposed_inputs": ["steps"]}})}
    created = json.loads(subprocess.run([FLUXHOST, "keys", "create", "--json"], env={**os.environ, **env},
                                        capture_output=True, text=True, check=True).stdout)
    key = NewKey(created["id"], created["project"], created["name"], created["mode"], created["api_key"],
                 created["api_secret"], created["webhook_secret"])
    client = ProtocolClient(f"http://127.0.0.1:{port}", key)

    def start(grace_seconds: float) -> ServiceProcess:
        process = ServiceProcess(["serve"], {**env, "FLUXHOST_SHUTDOWN_GRACE_SECONDS": str(grace_seconds)})
        started.append(process)
        wait_until_ready(client.base_url, process)
        return process

    yield start, client, TaskStore(Database(f"sqlite:///{tmp_path / 'data' / 'fluxhost.db'}"))
    stop_all(started)


def terminate(process: ServiceProcess) -> int:
    process.process.send_signal(signal.SIGTERM)
    return process.process.wait(60)


def test_running_task_finishes_within_the_grace_and_runs_are_refused_meanwhile(serve):
    start, client, tasks = serve
    process = start(grace_seconds=30)
    taskid = client.run(steps="40")["taskid"]  # 2 s of engine time
    client.wait(taskid, statuses=("task_start",))
    process.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:  # the listening socket closes at once: a new Run cannot even connect
        try:
            httpx.post(f"{client.base_url}/v1/Tool/List", timeout=1)
        except httpx.TransportError:
            break
        assert time.monotonic() < deadline, "the service still took requests after SIGTERM"
        time.sleep(0.05)
    assert process.process.wait(60) == 0
    record = tasks.get(int(taskid))
    assert (record.status, record.outcome, len(record.outputs)) == ("task_postprocess_end", "completed", 1)


def test_a_task_outlasting_the_grace_is_queued_again_and_completes_after_restart(serve):
    start, client, tasks = serve
    process = start(grace_seconds=0.5)
    running = client.run(steps="100")["taskid"]  # 5 s of engine time
    queued = client.run(steps="2")["taskid"]
    client.wait(running, statuses=("task_start",))
    assert terminate(process) == 0
    assert "queued again at shutdown" in process.output
    for taskid in (running, queued):
        row = tasks.get(int(taskid))
        assert (row.status, row.worker_id, row.attempts) == ("task_queue", None, 0)

    start(grace_seconds=30)
    for taskid in (running, queued):
        assert client.wait(taskid, timeout=60)["pexit"] == "0"
        record = tasks.get(int(taskid))
        assert (record.attempts, len(record.outputs)) == (1, 1)  # the interrupted run is not counted
