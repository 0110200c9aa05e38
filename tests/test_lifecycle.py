"""Running tasks: reproducible images, Cancel, Kill, failures, metadata."""

import io
import threading
import time

import httpx
from PIL import Image

from fluxhost.runtime.outputs import embedded_parameters
from fluxhost.signing import KeyMode
from fluxhost.statuses import TERMINAL
from tests.helpers import SLUG, LiveServer, ProtocolClient


def download(task: dict) -> bytes:
    [output] = task["outputs"]
    return httpx.get(output["url"], timeout=30).content


def test_same_seed_same_bytes_other_seed_other_image(make_settings):
    # Byte for byte when run one per call; a batched run is within one grey level (test_batching).
    with LiveServer(make_settings(max_batch=1)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        first, second, other = (client.run(seed=seed)["taskid"] for seed in ("42", "42", "43"))
        images = [download(client.wait(taskid)) for taskid in (first, second, other)]
    assert images[0] == images[1]
    assert images[0] != images[2]


def test_images_carry_their_parameters(client):
    task = client.wait(client.run(seed="7", aspectRatio="1:1", outputFormat="jpeg")["taskid"])
    assert task["pexit"] == "0"
    [output] = task["outputs"]
    assert output["name"] == "0.jpg" and output["contenttype"] == "image/jpeg"
    data = download(task)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (1024, 1024)
    embedded = embedded_parameters(data)
    assert embedded["seed"] == 7 and embedded["prompt"] == "a red fox in the snow" and embedded["model"] == SLUG


def test_a_random_seed_is_recorded_and_reproduces_the_image(client):
    first = client.wait(client.run()["taskid"])
    seed = first["parameters"]["seed"]
    again = client.wait(client.run(seed=seed)["taskid"])
    assert download(first) == download(again)


def test_cancel_of_a_queued_task_means_it_never_runs(slow_client):
    running = slow_client.run()["taskid"]
    queued = slow_client.run()["taskid"]
    slow_client.wait(running, ("task_start",))
    answer = slow_client.call("Task/Cancel", {"taskid": queued})
    assert answer["result"] is True and answer["tasklist"][0]["status"] == "task_cancel"
    again = slow_client.call("Task/Cancel", {"taskid": queued})
    assert again["errors"] == [{"code": 1, "message": "Task is not in a cancellable state."}]
    busy = slow_client.call("Task/Cancel", {"taskid": running})
    assert busy["errors"] == [{"code": 1, "message": "Task is not in a cancellable state."}]

    slow_client.call("Task/Kill", {"taskid": running})  # free the worker
    slow_client.wait(running)
    time.sleep(1.5)  # the worker is idle and would have taken the task by now
    task = slow_client.detail(queued)
    assert task["status"] == "task_cancel" and int(task["canceltime"]) > 0
    assert task["accepttime"] == task["starttime"] == "0" and task["outputs"] == []


def test_kill_stops_a_running_task_within_a_step(slow_server, slow_client):
    steps: list[int] = []
    seen = threading.Condition()

    def record(event):
        if event.type == "task_output":
            with seen:
                steps.append(event.progress.step)
                seen.notify_all()

    slow_server.service.events.subscribe(record)
    taskid = slow_client.run()["taskid"]
    with seen:
        assert seen.wait_for(lambda: len(steps) >= 2, timeout=60)
    answer = slow_client.call("Task/Kill", {"taskid": taskid})
    killed_at = steps[-1]
    assert answer["result"] is True and answer["tasklist"][0]["status"] == "task_cancel"

    deadline = time.monotonic() + 30
    while "Stopped at step" not in (task := slow_client.detail(taskid))["debugoutput"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopped_at = int(task["debugoutput"].split("Stopped at step ")[1].split()[0])
    assert stopped_at <= killed_at + 2  # the step in flight when Kill landed, at most one more
    assert max(steps) == stopped_at - 1 and stopped_at < 60  # no progress after the stop
    assert task["status"] == "task_cancel" and task["outputs"] == [] and int(task["canceltime"]) > 0
    assert slow_client.call("Task/Kill", {"taskid": taskid})["errors"][0]["code"] == 1


def test_an_engine_failure_fails_the_task_with_its_reason(server, client):
    assert server.service.dispatcher.ready.wait(30)
    model = server.service.dispatcher.worker.models[SLUG]

    def broken(requests, on_start, on_step):  # noqa: ARG001
        raise RuntimeError("CUDA out of memory (simulated)")

    model.engine.generate_batch = broken
    task = client.wait(client.run()["taskid"])
    assert task["status"] == "task_postprocess_end" and task["pexit"] == "1"
    assert "CUDA out of memory (simulated)" in task["debugerror"] and task["outputs"] == []


def test_a_model_that_cannot_load_refuses_runs_and_fails_its_queued_tasks(make_settings, tmp_path, tiny_weights):
    from fluxhost.settings import ModelSettings

    models = {SLUG: ModelSettings(weights=str(tmp_path / "missing")),
              "acme/working": ModelSettings(weights=str(tiny_weights), steps=2, max_sequence_length=32)}
    with LiveServer(make_settings(models=models, worker_concurrency=0)) as live:  # queued before any load
        key = live.service.keys.create(KeyMode.SIGNATURE)
        queued = ProtocolClient(live.base_url, key).run()["taskid"]
    with LiveServer(make_settings(models=models)) as live:
        client = ProtocolClient(live.base_url, key)
        task = client.wait(queued)
        assert task["status"] == "task_postprocess_end" and task["pexit"] == "1"  # though it never started
        assert task["starttime"] == "0"
        assert "could not be loaded" in task["debugerror"]
        assert "FLUXHOST_MODELS" in task["debugerror"]
        refused = client.call(f"Run/{SLUG}", {"prompt": "a fox"})
        assert refused["result"] is False and "FLUXHOST_MODELS" in refused["errors"][0]["message"]
        served = client.call("Run/acme/working", {"prompt": "a fox"})
        assert client.wait(served["taskid"])["pexit"] == "0"  # the other model keeps serving


def test_a_task_waiting_for_the_engine_is_assigned_not_started(make_settings):
    with LiveServer(make_settings(steps=4, worker_concurrency=2)) as live:
        running, release = threading.Event(), threading.Event()

        def hold_the_engine(event) -> None:
            """Progress is published on the generating thread: holding it holds the first task's
            generation (and the engine) mid-run, however loaded the machine is."""
            if event.progress and not release.is_set():
                running.set()
                release.wait(60)

        live.service.events.subscribe(hold_the_engine)
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        first = client.run()["taskid"]
        assert running.wait(120), "the first task never started"
        try:
            second = client.run()["taskid"]
            waiting = client.wait(second, statuses=("task_assign", "task_start", *TERMINAL))
            assert client.detail(first)["status"] == "task_start"
            assert waiting["status"] == "task_assign" and waiting["starttime"] == "0"  # claimed, not started
            client.call("Task/Kill", {"taskid": first})
        finally:
            release.set()
        done = client.wait(second)
        assert done["pexit"] == "0" and int(done["starttime"]) >= int(waiting["assigntime"])
