"""/metrics as Prometheus scrapes it: requests by route template, sockets, callbacks, the tasks
the database holds, and the worker's timings, whether the worker is a thread or a child process."""

import asyncio
import time

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families

from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, ProtocolClient, Receiver
from tests.test_socket import socket_url


def scrape(live: LiveServer) -> dict[str, list]:
    """Metric name -> its samples, as a scraper parses them."""
    answer = httpx.get(f"{live.base_url}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    matching = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(matching)


def test_a_task_shows_in_the_metrics_of_every_part_it_crossed(make_settings):
    settings = make_settings(steps=4, max_batch=1, callback_allowlist="127.0.0.1")
    with Receiver([200]) as receiver, LiveServer(settings) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        taskid = client.run(seed="3", callbackUrl=receiver.url)["taskid"]
        assert client.wait(taskid)["pexit"] == "0"
        receiver.wait_for(1)
        client.call("Task/Detail", {"taskid": "not-a-number"})
        httpx.post(f"{live.base_url}/v1/Nowhere/{'x' * 40}", timeout=10)
        deadline = time.monotonic() + 10
        while value(samples := scrape(live), "fluxhost_callback_attempts_total", outcome="delivered") < 1:
            assert time.monotonic() < deadline, "the delivered callback was never counted"
            time.sleep(0.1)

    requests = "fluxhost_http_request_duration_seconds_count"
    assert value(samples, requests, route="/v1/Run/{owner}/{project}", method="POST", status="200") == 1
    assert value(samples, requests, route="/v1/Task/Detail", method="POST", status="200") >= 2
    assert value(samples, requests, route="unmatched", status="404") == 1  # never the raw path as a label
    assert not any("Nowhere" in str(s.labels) for s in samples[requests])
    assert value(samples, "fluxhost_task_queue_wait_seconds_count", model=SLUG) == 1
    assert value(samples, "fluxhost_task_run_seconds_count", model=SLUG, outcome="completed") == 1
    assert value(samples, "fluxhost_step_seconds_count", model=SLUG) == 4
    assert value(samples, "fluxhost_engine_load_seconds", model=SLUG) > 0
    assert value(samples, "fluxhost_tasks") == 0  # nothing queued or running any more


def test_queue_depth_and_sockets_are_counted_while_they_last(slow_server, slow_client):
    running = slow_client.run()["taskid"]
    slow_client.wait(running, statuses=("task_start",))
    queued = slow_client.run()

    async def with_two_sockets_open() -> dict[str, list]:
        async with websockets.connect(socket_url(slow_server)), websockets.connect(socket_url(slow_server)):
            await asyncio.sleep(0.2)
            return await asyncio.to_thread(scrape, slow_server)

    samples = asyncio.run(with_two_sockets_open())
    assert value(samples, "fluxhost_socket_connections") == 2
    assert value(samples, "fluxhost_tasks", status="task_queue", model=SLUG) == 1
    assert value(samples, "fluxhost_tasks", status="task_start", model=SLUG) == 1
    slow_client.call("Task/Cancel", {"taskid": queued["taskid"]})
    slow_client.call("Task/Kill", {"taskid": running})
    slow_client.wait(running)
    deadline = time.monotonic() + 10
    while value(samples := scrape(slow_server), "fluxhost_task_run_seconds_count", outcome="stopped") < 1:
        assert time.monotonic() < deadline, "the killed run was never counted"
        time.sleep(0.1)
    assert value(samples, "fluxhost_socket_connections") == 0
    assert value(samples, "fluxhost_tasks") == 0


def test_the_child_workers_metrics_reach_the_api(make_settings):
    settings = make_settings(steps=5, worker_process=True, engine="bench", bench_step_ms=5)
    with LiveServer(settings) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.KEY_ONLY))
        for seed in range(3):
            assert client.wait(client.run(seed=str(seed))["taskid"])["pexit"] == "0"
        deadline = time.monotonic() + 15  # the child sends its figures every couple of seconds
        while value(samples := scrape(live), "fluxhost_task_run_seconds_count", outcome="completed") < 3:
            assert time.monotonic() < deadline, "the child's task counts never reached /metrics"
            time.sleep(0.2)
        assert value(samples, "fluxhost_step_seconds_count", model=SLUG) == 15
        assert value(samples, "fluxhost_http_request_duration_seconds_count", route="/v1/Run/{owner}/{project}") == 3
