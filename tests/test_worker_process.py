"""The embedded worker in a child process (FLUXHOST_WORKER_PROCESS): the same lifecycle as the
worker thread, with the socket, Kill and load failures crossing the pipe, and a child that dies
replaced, its task run again to one completion."""

import asyncio
import concurrent.futures
import os
import signal
import time

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from fluxhost.events import TaskEvent
from fluxhost.settings import ModelSettings
from fluxhost.signing import KeyMode
from fluxhost.statuses import Status
from tests.helpers import SLUG, LiveServer, ProtocolClient
from tests.test_socket import follow, socket_url

pytestmark = pytest.mark.slow  # a child process per test


def bench(make_settings, steps: int):
    """The bench engine, 20 ms a step: the child starts in a moment and a task lasts steps/50 s."""
    return make_settings(steps=steps, worker_process=True, engine="bench", bench_step_ms=20)


def child_pid(live: LiveServer) -> int:
    deadline = time.monotonic() + 30
    while live.service.dispatcher.pid is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return live.service.dispatcher.pid


def test_a_task_runs_in_the_child_and_the_socket_sees_its_frames(make_settings):
    with LiveServer(bench(make_settings, steps=8)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        run = client.run(seed="4")
        frames = asyncio.run(follow(socket_url(live), run["socketaccesstoken"]))
        assert [frame["type"] for frame in frames][-1] == "task_postprocess_end"
        task = client.detail(run["taskid"])
        assert task["pexit"] == "0"
        assert live.service.tasks.get(int(run["taskid"])).worker_id == live.service.worker_id  # the parent's id
        assert httpx.get(task["outputs"][0]["url"], timeout=10).content[:4] == b"\x89PNG"
        assert child_pid(live) != os.getpid()


def test_kill_reaches_the_generation_in_the_child(make_settings):
    with LiveServer(bench(make_settings, steps=100)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        taskid = client.run()["taskid"]
        client.wait(taskid, statuses=("task_start",))
        assert client.call("Task/Kill", {"taskid": taskid})["result"] is True
        deadline = time.monotonic() + 30
        while "Stopped at step" not in client.detail(taskid)["debugoutput"]:
            assert time.monotonic() < deadline, "the child never stopped the killed task"
            time.sleep(0.05)


def child_killed_mid_task(live: LiveServer, timeout: float) -> tuple[int, dict, int]:
    """A task's id, its detail once it ended, and the pid of the child SIGKILLed while it ran."""
    client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
    taskid = client.run()["taskid"]
    client.wait(taskid, statuses=("task_start",))
    first = child_pid(live)
    os.kill(first, signal.SIGKILL)
    return int(taskid), client.wait(taskid, timeout=timeout), first


def test_a_child_that_dies_is_replaced_and_its_task_completes_once(make_settings):
    with LiveServer(bench(make_settings, steps=100)) as live:
        taskid, task, first = child_killed_mid_task(live, timeout=120)
        assert task["status"] == "task_postprocess_end" and task["pexit"] == "0" and len(task["outputs"]) == 1
        assert live.service.tasks.get(taskid).attempts == 2 and child_pid(live) != first


def test_a_recovery_that_fails_is_tried_again_and_the_lost_task_still_completes(make_settings):
    """Taking back a dead child's tasks reads and writes the database, which may fail just then:
    the relay tries again (and starts a new child after), where it had died with the error."""
    with LiveServer(bench(make_settings, steps=100)) as live:
        dispatcher = live.service.dispatcher
        recover, failures = dispatcher.on_lost, []

        def failing_once() -> None:
            if not failures:
                failures.append("database is locked")
                raise OperationalError("UPDATE tasks", {}, Exception("database is locked"))
            recover()

        dispatcher.on_lost = failing_once
        taskid, task, first = child_killed_mid_task(live, timeout=60)
        assert failures and task["status"] == "task_postprocess_end" and task["pexit"] == "0"
        assert live.service.tasks.get(taskid).attempts == 2 and child_pid(live) != first


def test_a_model_the_child_cannot_load_refuses_runs(make_settings, tmp_path):
    models = {SLUG: ModelSettings(weights=str(tmp_path / "missing"))}
    with LiveServer(make_settings(models=models, worker_process=True)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        deadline = time.monotonic() + 60
        while (refused := client.call(f"Run/{SLUG}", {"prompt": "a fox"}))["result"]:
            assert time.monotonic() < deadline, "the load failure never reached the API"
            time.sleep(0.2)
        assert "FLUXHOST_MODELS" in refused["errors"][0]["message"]


def test_with_redis_events_each_event_of_a_child_task_is_published_once(make_settings, redis_url):
    """The child publishes on a bus of its own; the parent relays each event to Redis once, and
    nothing heard on Redis goes back down the pipe (it once looped: thousands of messages a task)."""
    import redis

    steps = 4
    connection = redis.Redis.from_url(redis_url)
    channel = connection.pubsub(ignore_subscribe_messages=True)
    channel.subscribe("fluxhost:events")
    channel.get_message(timeout=5)
    try:
        settings = make_settings(steps=steps, worker_process=True, engine="bench", bench_step_ms=20,
                                 events_url=redis_url)
        with LiveServer(settings) as live:
            client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
            run = client.run(seed="4")
            assert client.wait(run["taskid"])["pexit"] == "0"
            heard: list[bytes] = []
            quiet_until = time.monotonic() + 2.0  # a loop would keep the channel busy long after the end
            while time.monotonic() < quiet_until:
                if (message := channel.get_message(timeout=0.1)) is not None:
                    heard.append(message["data"])
    finally:
        channel.close()
        connection.close()
    ours = [data for data in heard if TaskEvent.decode(data).token == run["socketaccesstoken"]]
    assert len(set(ours)) == len(ours)  # no message twice
    assert [TaskEvent.decode(data).type for data in ours] == [
        Status.QUEUE, Status.ACCEPT, Status.PREPROCESS_START, Status.PREPROCESS_END, Status.ASSIGN, Status.START,
        *[Status.OUTPUT] * steps, Status.OUTPUT_FULL, Status.END, Status.POSTPROCESS_START, Status.POSTPROCESS_END,
    ]


def test_runs_sent_together_each_reach_the_parent_with_every_event_once_and_in_order(make_settings):
    """The child's events cross the pipe in batches, and a busy child is not woken for each Run:
    every task still completes, and the parent's bus hears each of its events once, in order."""
    steps, count = 2, 24
    with LiveServer(bench(make_settings, steps=steps)) as live:
        heard: list[TaskEvent] = []
        live.service.events.subscribe(heard.append)
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            runs = list(pool.map(lambda seed: client.run(seed=str(seed)), range(count)))
        for run in runs:
            assert client.wait(run["taskid"])["pexit"] == "0"
    for run in runs:
        types = [event.type for event in heard if event.token == run["socketaccesstoken"]]
        # The API publishes task_queue after its commit: a busy child may claim the task first.
        assert types.count(Status.QUEUE) == 1
        assert [kind for kind in types if kind != Status.QUEUE] == [
            Status.ACCEPT, Status.PREPROCESS_START, Status.PREPROCESS_END, Status.ASSIGN, Status.START,
            *[Status.OUTPUT] * steps, Status.OUTPUT_FULL, Status.END, Status.POSTPROCESS_START, Status.POSTPROCESS_END,
        ]
