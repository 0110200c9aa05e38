"""Queued tasks of one model, size, steps and guidance run as one pipeline call, each with its own
prompt and seed, each image as it would be alone (within one grey level); a Kill drops one task."""

import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import event
from sqlalchemy.exc import OperationalError as DatabaseError

from fluxhost.orders import WorkOrder
from fluxhost.signing import KeyMode
from fluxhost.statuses import Status
from fluxhost.store.database import Database
from fluxhost.store.tasks import StopResult, TaskStore
from fluxhost.store.work import WorkStore
from tests.helpers import FOX_ORDER, SLUG, LiveServer, ProtocolClient, database_with_project

PROMPTS = ["a red fox in the snow", "a lighthouse at dusk", "a quiet street", "a red fox in the snow"]


def pixels(task: dict) -> np.ndarray:
    [output] = task["outputs"]
    return np.asarray(Image.open(io.BytesIO(httpx.get(output["url"], timeout=30).content)).convert("RGB"), dtype=int)


def engine_of(live: LiveServer):
    return live.service.dispatcher.worker.models[SLUG].engine


def queue_while_no_worker(make_settings, runs: list[dict], **settings) -> tuple[ProtocolClient, list[str]]:
    """Queue ``runs`` on a server without a worker, so that the next server finds them all queued."""
    with LiveServer(make_settings(worker_concurrency=0, **settings)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        return client, [client.run(**run)["taskid"] for run in runs]


def test_four_queued_tasks_run_in_one_call_each_as_it_would_alone(make_settings):
    runs = [{"prompt": prompt, "seed": str(seed), "aspectRatio": "1:1"} for seed, prompt in enumerate(PROMPTS)]
    client, batched = queue_while_no_worker(make_settings, runs)
    with LiveServer(make_settings()) as live:
        client.base_url = live.base_url
        tasks = [client.wait(taskid) for taskid in batched]
        assert engine_of(live).batches == 1
        together = [pixels(task) for task in tasks]
    assert all(task["pexit"] == "0" for task in tasks)
    assert all("Batched with 3 other task(s) in one pipeline call." in task["debugoutput"] for task in tasks)

    with LiveServer(make_settings(max_batch=1)) as live:
        client.base_url = live.base_url
        alone = [pixels(client.wait(client.run(**run)["taskid"])) for run in runs]
        assert engine_of(live).batches == 4
    for batched_image, single_image in zip(together, alone, strict=True):
        assert np.abs(batched_image - single_image).max() <= 1
    assert np.abs(together[0] - together[1]).max() > 1  # each kept its own prompt and seed


def test_a_kill_in_a_batch_drops_that_task_only(make_settings):
    runs = [{"prompt": prompt, "seed": str(seed), "aspectRatio": "1:1"} for seed, prompt in enumerate(PROMPTS)]
    client, batched = queue_while_no_worker(make_settings, runs, steps=4)
    with LiveServer(make_settings(steps=4)) as live:
        client.base_url = live.base_url
        victim = batched[1]
        progressed: set[str] = set()
        victim_running, killed = threading.Event(), threading.Event()

        def seen(event) -> None:
            """Progress is published on the generating thread: the batch waits here, at the
            victim's second step, until the Kill is in, however loaded the machine is."""
            if event.progress:
                progressed.add(str(event.task_id))
                if str(event.task_id) == victim and event.progress.step == 2:
                    victim_running.set()
                    killed.wait(60)

        live.service.events.subscribe(seen)
        assert victim_running.wait(120)
        try:
            assert client.call("Task/Kill", {"taskid": victim})["result"] is True
        finally:
            killed.set()
        tasks = {taskid: client.wait(taskid) for taskid in batched}
    assert tasks[victim]["status"] == "task_cancel" and tasks[victim]["outputs"] == []
    assert "Stopped at step" in tasks[victim]["debugoutput"]
    for taskid in batched:
        if taskid != victim:
            assert tasks[taskid]["pexit"] == "0" and len(tasks[taskid]["outputs"]) == 1
    assert progressed == set(batched)  # every task of the batch got progress


@pytest.fixture
def queued_tasks(tmp_path) -> tuple[Database, TaskStore, WorkStore, int, list[int]]:
    """A database with eight tasks of one model queued, in one project."""
    db, project_id = database_with_project(f"sqlite:///{tmp_path / 'db.sqlite'}")
    tasks = TaskStore(db)
    queued = [tasks.create(project_id, SLUG, {}, FOX_ORDER).id for _ in range(8)]
    return db, tasks, WorkStore(db), project_id, queued


def commits_of(db: Database) -> list[object]:
    """Grows by one at each commit from now on."""
    commits: list[object] = []
    event.listen(db.engine, "commit", commits.append)
    return commits


def test_a_batch_is_claimed_in_one_write_reading_orders_only_until_it_is_full(queued_tasks):
    db, tasks, work, _project_id, queued = queued_tasks
    first = work.claim_next("worker", [SLUG], lease_seconds=60)
    commits, read = commits_of(db), []

    def joins(order: WorkOrder) -> bool:
        read.append(order)
        return True

    more = work.claim_more("worker", SLUG, lease_seconds=60, limit=3, joins=joins)
    assert [first.id, *(task.id for task in more)] == queued[:4]
    assert len(commits) == 1 and len(read) == 3
    assert [tasks.get(task_id).status for task_id in queued[:5]] == ["task_accept"] * 4 + ["task_queue"]


def test_a_database_fault_while_a_batch_gathers_leaves_the_first_task_to_run_alone(queued_tasks, monkeypatch):
    """The first task's claim is committed: a fault reading the queue for more (a dropped
    connection) must not come out of the claim, or the worker would drop a task it holds."""
    db, tasks, work, _project_id, queued = queued_tasks
    first = work.claim_next("worker", [SLUG], lease_seconds=60)

    def dropped() -> None:
        raise DatabaseError("SELECT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(db, "read", dropped)
    assert work.claim_more("worker", SLUG, lease_seconds=60, limit=3, joins=lambda _order: True) == []
    monkeypatch.undo()
    assert [tasks.get(task_id).status for task_id in queued[:2]] == ["task_accept", "task_queue"]
    assert first.id == queued[0]


def test_a_batch_starts_in_one_write_and_a_task_killed_before_it_stays_stopped(queued_tasks):
    db, tasks, work, project_id, queued = queued_tasks
    claimed = [work.claim_next("worker", [SLUG], lease_seconds=60, through=Status.ASSIGN).id for _ in range(3)]
    assert tasks.kill(project_id, claimed[1]) == StopResult.STOPPED
    commits = commits_of(db)
    assert work.advance_each(claimed, "worker", Status.START, lease_seconds=60) == [True, False, True]
    assert len(commits) == 1
    assert [tasks.get(task_id).status for task_id in claimed] == ["task_start", "task_cancel", "task_start"]
