"""Several API and worker services on one PostgreSQL database and one Redis: tasks and their events
cross from any service to any other; Kill reaches the worker running the task; a nonce spent on one
API is refused by the other. On the PostgreSQL and Redis servers of the `postgres_server` and
`redis_url` fixtures (throwaway ones, or those `.ci/run` names)."""

import asyncio
import time
from collections.abc import Iterator

import pytest

from fluxhost.signing import KeyMode
from tests.helpers import LiveServer, ProtocolClient, fresh_postgres_database
from tests.test_socket import follow, socket_url

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet_database(postgres_server) -> Iterator[str]:
    with fresh_postgres_database(postgres_server, "fleet") as url:
        yield url


@pytest.fixture
def fleet(make_settings, fleet_database, redis_url, tmp_path):
    """API A (no worker) and API B (with a worker), sharing the database, the events and the files."""
    shared = dict(database_url=fleet_database, events_url=redis_url, data_dir=tmp_path / "shared")
    with LiveServer(make_settings(steps=30, max_batch=1, worker_concurrency=0, **shared)) as api_a, \
            LiveServer(make_settings(steps=30, max_batch=1, **shared)) as api_b:
        key = api_a.service.keys.create(KeyMode.SIGNATURE)
        yield ProtocolClient(api_a.base_url, key), ProtocolClient(api_b.base_url, key), api_a


def test_a_socket_on_one_api_follows_a_task_run_through_another(fleet):
    client_a, client_b, api_a = fleet
    run = client_b.run(seed="9")
    frames = asyncio.run(follow(socket_url(api_a), run["socketaccesstoken"]))
    kinds = [frame["type"] for frame in frames]
    assert kinds[-1] == "task_postprocess_end" and frames[-1]["pexit"] == "0"
    assert "task_output" in kinds and kinds.index("task_start") < kinds.index("task_output")
    assert client_a.detail(run["taskid"])["status"] == "task_postprocess_end"


def test_kill_and_cancel_through_one_api_reach_the_worker_behind_another(fleet):
    client_a, client_b, _api_a = fleet
    running = client_b.run()["taskid"]
    queued = client_b.run()["taskid"]
    client_a.wait(running, statuses=("task_start",))
    assert client_a.call("Task/Cancel", {"taskid": queued})["tasklist"][0]["status"] == "task_cancel"
    assert client_a.call("Task/Kill", {"taskid": running})["result"] is True
    assert client_b.wait(running)["status"] == "task_cancel"
    deadline = time.monotonic() + 30
    while "Stopped at step" not in client_b.detail(running)["debugoutput"]:  # the worker's note follows the stop
        assert time.monotonic() < deadline, "the worker behind API B never stopped the killed task"
        time.sleep(0.05)
    assert client_b.detail(queued)["starttime"] == "0"


def test_a_nonce_spent_on_one_api_is_refused_by_another(fleet):
    client_a, client_b, _api_a = fleet
    headers = client_a.headers()
    body = {"prompt": "a red fox", "seed": "1"}
    first = client_a.post("Run/black-forest-labs/flux-pro-1.1", body, headers=headers)
    again = client_b.post("Run/black-forest-labs/flux-pro-1.1", body, headers=headers)
    assert first.json()["result"] is True
    assert again.json()["result"] is False and client_a.call("Task/List", {})["total"] == "1"
