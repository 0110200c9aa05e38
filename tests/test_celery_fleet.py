"""The scaled-out deployment as processes: two `fluxhost serve` API processes and two `fluxhost
worker` Celery workers on one PostgreSQL database and one Redis (broker and events). On the
servers of the `postgres_server` and `redis_url` fixtures (throwaway ones, or those `.ci/run` names)."""

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url

from fluxhost.signing import KeyMode
from fluxhost.store.database import Database
from fluxhost.store.keys import KeyStore
from fluxhost.store.schema import outputs, tasks
from tests.helpers import (
    SLUG,
    ProtocolClient,
    ServiceProcess,
    free_port,
    fresh_postgres_database,
    stop_all,
    wait_until_ready,
)
from tests.test_socket import follow

pytestmark = pytest.mark.slow

REDIS_DATABASE = 7  # the broker's queues of this module must not reach another's workers
STEP_MS = 50
VISIBILITY_SECONDS = 10  # a dead worker's message comes back within the test


@dataclass
class Fleet:
    api_a: ProtocolClient
    api_b: ProtocolClient
    workers: list[ServiceProcess]
    db: Database
    env: dict[str, str]

    def row(self, taskid: str):
        with self.db.read() as connection:
            return connection.execute(select(tasks).where(tasks.c.id == int(taskid))).one()

    def worker_pid(self, taskid: str) -> int:
        return int(self.row(taskid).worker_id.rsplit("-", 2)[1])

    def replace_dead_workers(self) -> None:
        """A worker a test killed is replaced, so that every test starts with two."""
        for index, worker in enumerate(self.workers):
            if worker.process.poll() is not None:
                worker.stop()
                self.workers[index] = ServiceProcess(["worker"], self.env)
                self.workers[index].wait_for(" ready.")


@pytest.fixture(scope="module")
def broker(redis_url) -> str:
    return make_url(redis_url).set(database=str(REDIS_DATABASE)).render_as_string()


@pytest.fixture(scope="module")
def running_fleet(tmp_path_factory, postgres_server, broker) -> Iterator[Fleet]:
    """One fleet for the module: starting its four processes costs each the imports of a server."""
    queues = redis.Redis.from_url(broker)
    queues.flushdb()
    with fresh_postgres_database(postgres_server, "celery") as database_url:
        db = Database(database_url)
        db.migrate()
        key = KeyStore(db).create(KeyMode.SIGNATURE)
        env = {
            "FLUXHOST_DATABASE_URL": database_url,
            "FLUXHOST_BROKER_URL": broker,
            "FLUXHOST_DATA_DIR": str(tmp_path_factory.mktemp("shared")),
            "FLUXHOST_ENGINE": "bench",
            "FLUXHOST_BENCH_STEP_MS": str(STEP_MS),
            "FLUXHOST_MODELS": json.dumps({SLUG: {"steps": 4, "max_batch": 1, "exposed_inputs": ["steps"]}}),
            "FLUXHOST_LEASE_SECONDS": "2",
            "FLUXHOST_BROKER_VISIBILITY_SECONDS": str(VISIBILITY_SECONDS),
            "FLUXHOST_BROKER_TRANSPORT_OPTIONS": json.dumps({"unacked_restore_interval": 1,
                                                              "unacked_restore_throttle": 1}),
            "FLUXHOST_LOG_LEVEL": "INFO",
        }
        ports = [free_port(), free_port()]
        servers = [ServiceProcess(["serve", "--port", str(port)], env) for port in ports]
        fleet = Fleet(*(ProtocolClient(f"http://127.0.0.1:{port}", key) for port in ports),
                      [ServiceProcess(["worker"], env) for _ in range(2)], db, env)
        try:
            for worker in fleet.workers:
                worker.wait_for(" ready.")
            for client, serve in zip((fleet.api_a, fleet.api_b), servers, strict=True):
                wait_until_ready(client.base_url, serve, path="/healthz", timeout=60)
            yield fleet
        finally:
            stop_all(servers + fleet.workers)
            db.dispose()
            queues.flushdb()
            queues.close()


@pytest.fixture
def fleet(running_fleet) -> Fleet:
    running_fleet.replace_dead_workers()
    return running_fleet


def test_tasks_from_both_apis_spread_over_both_workers(fleet):
    runs = [(fleet.api_a if index % 2 else fleet.api_b).run(seed=str(index)) for index in range(8)]
    for run in runs:
        assert fleet.api_a.wait(run["taskid"])["status"] == "task_postprocess_end"
    pids = {fleet.worker_pid(run["taskid"]) for run in runs}
    assert pids == {worker.process.pid for worker in fleet.workers}


def test_a_socket_on_one_api_follows_a_task_run_through_the_other(fleet):
    run = fleet.api_b.run(seed="9", steps="40")  # 2 s: the socket joins while it runs
    url = fleet.api_a.base_url.replace("http://", "ws://") + "/v1"
    frames = asyncio.run(follow(url, run["socketaccesstoken"]))
    kinds = [frame["type"] for frame in frames]
    assert kinds[-1] == "task_postprocess_end" and frames[-1]["pexit"] == "0"
    assert "task_start" in kinds and kinds.count("task_output") >= 2


def test_a_worker_killed_mid_task_leaves_it_to_the_other_exactly_once(fleet):
    taskid = fleet.api_a.run(steps="60")["taskid"]  # 3 s of engine time
    fleet.api_a.wait(taskid, statuses=("task_start",))
    first = fleet.worker_pid(taskid)
    os.kill(first, signal.SIGKILL)
    done = fleet.api_b.wait(taskid, timeout=60)
    assert done["status"] == "task_postprocess_end" and done["pexit"] == "0"
    row = fleet.row(taskid)
    assert row.attempts == 2 and fleet.worker_pid(taskid) != first
    # The dead worker's unacknowledged message comes back to the queue and claims nothing.
    survivor = next(worker for worker in fleet.workers if worker.process.pid != first)
    survivor.wait_for(f"task {taskid} is no longer queued: message dropped", timeout=VISIBILITY_SECONDS + 40)
    assert fleet.row(taskid).attempts == 2
    with fleet.db.read() as connection:
        assert connection.execute(select(func.count()).where(outputs.c.task_id == int(taskid))).scalar() == 1


def test_cancel_and_kill_through_one_api_reach_the_workers(fleet):
    running = [fleet.api_b.run(steps="60")["taskid"] for _ in range(2)]
    queued = fleet.api_b.run()["taskid"]
    for taskid in running:
        fleet.api_a.wait(taskid, statuses=("task_start",))
    assert fleet.api_a.call("Task/Cancel", {"taskid": queued})["tasklist"][0]["status"] == "task_cancel"
    assert fleet.api_a.call("Task/Kill", {"taskid": running[0]})["result"] is True
    assert fleet.api_b.wait(running[0])["status"] == "task_cancel"
    deadline = time.monotonic() + 30
    while "Stopped at step" not in fleet.api_b.detail(running[0])["debugoutput"]:
        assert time.monotonic() < deadline, "the worker never stopped the killed task"
        time.sleep(0.05)
    assert fleet.api_b.wait(running[1])["status"] == "task_postprocess_end"
    assert fleet.api_b.detail(queued)["starttime"] == "0"


def test_a_nonce_spent_on_one_api_is_refused_by_the_other(fleet):
    headers = fleet.api_a.headers()
    body = {"prompt": "a red fox", "seed": "1"}
    assert fleet.api_a.post(f"Run/{SLUG}", body, headers=headers).json()["result"] is True
    assert fleet.api_b.post(f"Run/{SLUG}", body, headers=headers).json()["result"] is False


def test_a_run_whose_api_died_before_the_broker_took_its_message_still_runs(fleet):
    """An API process that answered a Run and died before any broker took the task's message (here
    the broker refused it; a SIGKILL between the commit and the send is the same) leaves a queued
    task that no message names: the fleet's other processes send it, and it runs once."""
    env = {**fleet.env, "FLUXHOST_BROKER_URL": "redis://127.0.0.1:1/0",  # refused: nothing listens there
           "FLUXHOST_EVENTS_URL": fleet.env["FLUXHOST_BROKER_URL"]}
    port = free_port()
    doomed = ServiceProcess(["serve", "--port", str(port)], env)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", doomed, path="/healthz", timeout=60)
        taskid = ProtocolClient(f"http://127.0.0.1:{port}", fleet.api_a.key).run()["taskid"]
        doomed.wait_for(f"task {taskid} stays queued until the broker takes its message")
        doomed.process.kill()
    finally:
        doomed.stop()
    with fleet.db.write() as connection:  # a minute ago: the others leave a new task's message to its API at first
        connection.execute(update(tasks).where(tasks.c.id == int(taskid)).values(queued_time=tasks.c.queued_time - 60))
    done = fleet.api_b.wait(taskid, timeout=30)
    assert done["status"] == "task_postprocess_end" and done["pexit"] == "0"
    assert fleet.row(taskid).attempts == 1


def test_a_worker_asked_for_a_model_the_server_does_not_serve_says_so(tmp_path, postgres_server, broker):
    with fresh_postgres_database(postgres_server, "celery") as database_url:
        env = {"FLUXHOST_DATABASE_URL": database_url, "FLUXHOST_DATA_DIR": str(tmp_path), "FLUXHOST_ENGINE": "bench",
               "FLUXHOST_BROKER_URL": broker}
        worker = ServiceProcess(["worker", "--model", "acme/unknown"], env)
        assert worker.process.wait(60) == 2
        worker.stop()
        assert f"not a model of this server: acme/unknown (served: {SLUG}, " in worker.output  # and the family
