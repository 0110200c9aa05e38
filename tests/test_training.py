"""LoRA training as tasks, through the hosted protocol, on the tiny FLUX pipeline: a folder and a
ZIP of pictures with captions, a training Run with progress frames, samples, checkpoints and the
adapter, which the LoRA tool then takes by id and by URL; Kill keeps a checkpoint that a new Run
resumes from; bad training sets are refused at Run with nothing queued."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import re
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from fluxhost.settings import ModelSettings
from fluxhost.signing import KeyMode
from tests.helpers import LiveServer, ProtocolClient
from tests.test_socket import follow, socket_url
from tests.test_uploads import archive, send_file

TRAIN = "wiro/train-flux-lora"
DRAW = "wiro/text-to-image-flux-lora"
COLOURS = ("red", "blue", "green", "yellow")
FAST = {"resolution": 64, "batchSize": 2, "gradient_checkpointing": "false", "optimizer": "adamw",
        "learningRate": 0.01, "lora_rank": 4}


def picture(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def trainer(make_settings, tiny_weights):
    models = {slug: ModelSettings(weights=str(tiny_weights), steps=2, max_sequence_length=32, max_batch=1)
              for slug in (TRAIN, DRAW)}
    with LiveServer(make_settings(models=models)) as live:
        yield live, ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))


def training_folder(client: ProtocolClient) -> str:
    """A folder of four pictures: two uploaded one by one with captions, two in a ZIP."""
    [folder] = client.call("File/FolderCreate", {"name": "squares"})["list"]
    for colour in COLOURS[:2]:
        send_file(client, picture(colour), f"{colour}.png", folderid=folder["id"])
        send_file(client, f"a {colour} [trigger]".encode(), f"{colour}.txt", folderid=folder["id"])
    zipped = {f"set/{colour}.png": picture(colour) for colour in COLOURS[2:]} | {"set/green.txt": b"a green zq"}
    assert send_file(client, archive(zipped), "set.zip", folderid=folder["id"])["result"] is True
    return folder["id"]


def train(client: ProtocolClient, **inputs) -> dict:
    answer = client.call(f"Run/{TRAIN}", {"triggerWord": "zq", **FAST, **inputs})
    assert answer["result"] is True, answer
    return answer


def drawing(client: ProtocolClient, **inputs) -> np.ndarray:
    run = client.call(f"Run/{DRAW}", {"prompt": "a zq", "width": 64, "height": 64, "seed": "5", **inputs})
    assert run["result"] is True, run
    task = client.wait(run["taskid"])
    assert task["pexit"] == "0", task["debugerror"]
    data = httpx.get(task["outputs"][0]["url"], timeout=10).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)


def test_a_training_run_reports_progress_keeps_samples_and_checkpoints_and_its_adapter_draws(trainer):
    live, client = trainer
    folder = training_folder(client)
    run = train(client, selectedFolder=folder, trainingSteps=6, saveEvery=2, max_step_saves_to_keep=2,
                sampleEvery=3, prompt="a [trigger] on grey", trainModelName="squares", seed="3")
    frames = asyncio.run(follow(socket_url(live), run["socketaccesstoken"]))
    progress = [frame["message"] for frame in frames if frame["type"] == "task_output"]
    assert [message["stepCurrent"] for message in progress] == ["1", "2", "3", "4", "5", "6"]
    assert {message["task"] for message in progress} == {"Train"} and all(
        float(message["loss"]) > 0 and message["stepTotal"] == "6" for message in progress)
    assert frames[-1]["type"] == "task_postprocess_end"

    task = client.detail(run["taskid"])
    assert task["pexit"] == "0", task["debugerror"]
    outputs = {output["name"]: output for output in task["outputs"]}
    assert sorted(outputs) == ["adapter-000004.safetensors", "adapter-000006.safetensors",  # two kept of three
                               "sample-000003-1.png", "sample-000006-1.png"]
    assert "Training a rank-4 LoRA on 4 picture(s)" in task["debugoutput"]
    private = re.search(r"private LoRA model ([0-9a-f]{32}) \(squares\.safetensors\)", task["debugoutput"]).group(1)
    assert private in {entry["id"] for entry in client.call("File/List", {})["list"]}
    adapter_url = outputs["adapter-000006.safetensors"]["url"]
    assert httpx.get(adapter_url, timeout=10).content[8:9] == b"{"  # a safetensors header

    plain = drawing(client)
    by_id = drawing(client, selectedLoraModelPrivate=private)
    by_url = drawing(client, selectedLoraModelPrivateUrl=adapter_url)
    assert np.abs(by_id - plain).mean() > 0.5
    assert np.array_equal(by_id, by_url)  # the same adapter, by its id or its output's URL

    assert client.call("Task/InputOutputDelete", {"taskid": run["taskid"]})["result"] is True
    folder_of_checkpoints = adapter_url.split("/")[-2]
    assert not list(live.settings.files_dir.rglob(f"{folder_of_checkpoints}/*"))  # its state files too
    assert np.array_equal(drawing(client, selectedLoraModelPrivate=private), by_id)  # the private LoRA stays


def wait_for_checkpoint(live: LiveServer, taskid: str, step: int) -> None:
    """Until the training's manifest records a checkpoint of ``step`` or later (its files come and
    go: each checkpoint's resume state replaces the one before, and is written before it is named)."""
    from fluxhost.runtime.training import Manifest

    folder = live.service.tasks.get(int(taskid)).order.training.checkpoints_folder
    deadline = time.monotonic() + 120
    while (manifest := Manifest.read(live.service.files, folder)) is None or manifest.step < step:
        assert time.monotonic() < deadline, "no checkpoint was recorded"
        time.sleep(0.02)


def test_kill_keeps_the_last_checkpoint_and_a_new_run_resumes_from_it(trainer):
    live, client = trainer
    folder = training_folder(client)
    run = train(client, selectedFolder=folder, trainingSteps=5000, saveEvery=3, disable_sampling="true")
    wait_for_checkpoint(live, run["taskid"], 3)
    assert client.call("Task/Kill", {"taskid": run["taskid"]})["result"] is True
    assert client.wait(run["taskid"])["status"] == "task_cancel"
    deadline = time.monotonic() + 60
    while "Stopped by Kill." not in (killed := client.detail(run["taskid"]))["debugoutput"]:
        assert time.monotonic() < deadline, "the training never stopped"
        time.sleep(0.05)
    adapters = [output["name"] for output in killed["outputs"] if output["name"].startswith("adapter-")]
    reached = int(re.search(r"adapter-(\d+)", adapters[-1]).group(1))
    assert reached >= 3  # the step it was killed at: its checkpoint was written on the way out

    resumed = train(client, selectedFolder=folder, trainingSteps=reached + 2, disable_sampling="true",
                    resumeTaskId=run["taskid"])
    task = client.wait(resumed["taskid"])
    assert task["pexit"] == "0", task["debugerror"]
    assert f"Resumed from the checkpoint of step {reached}." in task["debugoutput"]
    assert "Trained 2 step(s)" in task["debugoutput"]
    assert [output["name"] for output in task["outputs"]] == [f"adapter-{reached + 2:06d}.safetensors"]


@pytest.mark.parametrize(("inputs", "files", "says"), [
    ({}, {}, "[selectedFolder] required"),
    ({"selectedFolder": "0" * 32}, {}, "names no folder of your project"),
    ({"selectedFolder": "FOLDER"}, {}, "holds no pictures to train on"),
    ({"selectedFolderUrl": "ZIP"}, {"readme.md": b"no pictures"}, "holds no pictures to train on"),
    ({"selectedFolderUrl": "ZIP"}, {"01.png": b"", "../../etc/cron.d/x.png": b"x"}, "leaves the archive's folder"),
    ({"selectedFolderUrl": "ZIP"}, {"01.png": b"", "01.txt": b"\xff\xfe\x00bad"}, "not UTF-8 text"),
    ({"selectedFolderUrl": "ZIP"}, {"01.png": b"", "zeros.txt": b"0" * 3_000_000}, "unpacks to more than 1 MB"),
    ({"selectedFolderUrl": "ZIP"}, {f"{n}.png": b"" for n in range(4)}, "more than the 3 pictures"),
    ({"selectedFolderUrl": "ZIP", "autocaption": "true"}, {"01.png": b""}, "no captioning model"),
    ({"selectedFolderUrl": "ZIP", "resumeTaskId": 999}, {"01.png": b""}, "names no training task"),
    ({"selectedFolderUrl": "ZIP", "trainingSteps": 10**9}, {"01.png": b""}, "[trainingSteps] must be between"),
])
def test_bad_training_sets_are_refused_at_run_with_nothing_queued(make_settings, tmp_path: Path, inputs, files,
                                                                 says):
    models = {TRAIN: ModelSettings(steps=2)}
    settings = make_settings(models=models, engine="bench", worker_concurrency=0, training_max_images=3,
                             archive_max_bytes=1_000_000)
    with LiveServer(settings) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        asked = dict(inputs)
        if asked.get("selectedFolder") == "FOLDER":
            asked["selectedFolder"] = client.call("File/FolderCreate", {"name": "empty"})["list"][0]["id"]
        if asked.get("selectedFolderUrl") == "ZIP":
            asked["selectedFolderUrl"] = _served(live, archive({name: data or picture("red")
                                                                for name, data in files.items()}))
        answer = client.call(f"Run/{TRAIN}", asked)
        assert answer["result"] is False and says in answer["errors"][0]["message"], answer
        assert client.call("Task/List", {})["total"] == "0"


def test_a_training_whose_task_cannot_be_stored_leaves_none_of_its_archives_pictures(make_settings, monkeypatch):
    from tests.test_uploads import database_locked, stored_files

    with LiveServer(make_settings(models={TRAIN: ModelSettings(steps=2)}, engine="bench",
                                  worker_concurrency=0)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        url = _served(live, archive({f"{colour}.png": picture(colour) for colour in COLOURS}))
        served = stored_files(live)
        asked = {"selectedFolderUrl": url, "triggerWord": "zq", **FAST}
        with monkeypatch.context() as patch:
            patch.setattr(live.service.tasks, "create", database_locked)
            refused = client.post(f"Run/{TRAIN}", asked)
        assert refused.status_code == 503, refused.text
        assert stored_files(live) == served  # the archive's pictures kept, then removed: only the archive

        save, saved = live.service.files.save, []

        def full_after_one(folder: str, name: str, data: bytes) -> None:
            if saved:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            saved.append(name)
            save(folder, name, data)

        monkeypatch.setattr(live.service.files, "save", full_after_one)
        refused = client.post(f"Run/{TRAIN}", asked)
        assert refused.status_code == 503, refused.text
        assert saved and stored_files(live) == served  # the first picture kept, then removed with its folder


def _served(live: LiveServer, data: bytes) -> str:
    """A URL of this server's file store holding ``data`` (where File/Upload would have unpacked
    the archive, or refused it)."""
    files = live.service.files
    folder = files.new_folder()
    files.save(folder, "set.zip", data)
    return files.url(folder, "set.zip")


@pytest.mark.slow
def test_a_worker_killed_mid_training_is_replaced_and_the_training_resumes_from_its_checkpoint(make_settings,
                                                                                               tiny_weights):
    from tests.test_worker_process import child_pid

    models = {TRAIN: ModelSettings(weights=str(tiny_weights), steps=2, max_sequence_length=32)}
    with LiveServer(make_settings(models=models, worker_process=True)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        folder = training_folder(client)
        steps = 40
        run = train(client, selectedFolder=folder, trainingSteps=steps, saveEvery=3, disable_sampling="true")
        wait_for_checkpoint(live, run["taskid"], 3)
        first = child_pid(live)
        os.kill(first, signal.SIGKILL)
        task = client.wait(run["taskid"], timeout=300)
        assert task["pexit"] == "0", task["debugerror"]
        reached = int(re.search(r"Resumed from the checkpoint of step (\d+)\.", task["debugoutput"]).group(1))
        assert 3 <= reached < steps and f"Trained {steps - reached} step(s)" in task["debugoutput"]
        assert live.service.tasks.get(int(run["taskid"])).attempts == 2 and child_pid(live) != first


def test_a_drawing_is_not_held_up_by_a_training(trainer):
    live, client = trainer
    run = train(client, selectedFolder=training_folder(client), trainingSteps=5000, disable_sampling="true")
    client.wait(run["taskid"], statuses=("task_start",))
    drawn = client.call(f"Run/{DRAW}", {"prompt": "a fox", "width": 64, "height": 64})
    assert client.wait(drawn["taskid"])["pexit"] == "0"
    assert client.detail(run["taskid"])["status"] == "task_start"  # still training meanwhile
    assert client.call("Task/Kill", {"taskid": run["taskid"]})["result"] is True


def test_a_worker_takes_only_the_kinds_it_is_set_to(make_settings, tiny_weights):
    models = {slug: ModelSettings(weights=str(tiny_weights), steps=2, max_sequence_length=32) for slug in (TRAIN, DRAW)}
    with LiveServer(make_settings(models=models, worker_kinds="train")) as live:
        deadline = time.monotonic() + 30
        while live.service.dispatcher.worker is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert list(live.service.dispatcher.worker.models) == [TRAIN]
    with pytest.raises(ValueError, match="unknown kind 'training'"):
        make_settings(worker_kinds="train,training")


def test_an_upload_a_queued_training_reads_is_neither_deleted_nor_expired_under_it(make_settings):
    """Deleted by File/Delete, or by expiry with no one asking, its picture was gone when the
    worker reached the training, which failed: "the training picture ... is no longer stored"."""
    from sqlalchemy import text

    with LiveServer(make_settings(models={TRAIN: ModelSettings(steps=2)}, engine="bench", worker_concurrency=0,
                                  upload_expiry_seconds=3600)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        [folder] = client.call("File/FolderCreate", {"name": "set"})["list"]
        [red] = send_file(client, picture("red"), "red.png", folderid=folder["id"])["list"]
        [note] = send_file(client, b"about the set", "notes.txt", folderid=folder["id"])["list"]  # no picture of it
        run = train(client, selectedFolder=folder["id"])
        refused = client.call("File/Delete", {"fileid": red["id"]})
        assert refused["errors"][0]["message"].startswith(f"The file is used by task {run['taskid']}, which has not")
        with live.service.db.write() as connection:  # made more than an hour ago: expired
            connection.execute(text("UPDATE uploads SET created_at = created_at - 3601"))
        assert live.service.operations.expire_uploads() == 1  # the note alone
        listed = [entry["id"] for entry in client.call("File/List", {"folderid": folder["id"]})["list"]]
        assert listed == [red["id"]] and note["id"] not in listed
        [image] = live.service.tasks.get(int(run["taskid"])).order.training.images
        assert live.service.files.read(image.file.folder, image.file.name) == picture("red")
        assert client.call("Task/Kill", {"taskid": run["taskid"]})["result"] is True
        assert client.call("File/Delete", {"fileid": red["id"]})["result"] is True  # its task ended


def test_an_upload_named_in_another_project_s_prompt_is_not_held_for_it(make_settings):
    """The check looked for the upload's folder anywhere in any task: a queued prompt of another
    project quoting the upload's URL refused its deletion, naming the other project's task."""
    with LiveServer(make_settings(models={DRAW: ModelSettings(steps=2)}, engine="bench",
                                  worker_concurrency=0)) as live:
        owner, other = (ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE)) for _ in range(2))
        [kept] = send_file(owner, picture("red"), "red.png")["list"]
        assert other.call(f"Run/{DRAW}", {"prompt": f"like {kept['url']}"})["result"] is True  # queued
        assert owner.call("File/Delete", {"fileid": kept["id"]})["result"] is True


def test_a_training_folder_s_late_captions_are_read_and_one_too_full_is_refused(make_settings):
    """Only the first 2 x the most pictures + 2 files were read: later captions were lost without a word."""
    with LiveServer(make_settings(models={TRAIN: ModelSettings(steps=2)}, engine="bench", worker_concurrency=0,
                                  training_max_images=2)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        [folder] = client.call("File/FolderCreate", {"name": "set"})["list"]
        for name in ("notes.txt", "licence.txt", "credits.txt"):
            send_file(client, b"about the pictures", name, folderid=folder["id"])
        for colour in ("red", "blue"):
            send_file(client, picture(colour), f"{colour}.png", folderid=folder["id"])
        for colour in ("red", "blue"):
            send_file(client, f"a {colour} square".encode(), f"{colour}.txt", folderid=folder["id"])
        run = train(client, selectedFolder=folder["id"])
        images = live.service.tasks.get(int(run["taskid"])).order.training.images
        assert [image.caption for image in images] == ["a red square", "a blue square"]
        many = archive({f"note-{number}.txt": b"about" for number in range(100)})
        assert send_file(client, many, "notes.zip", folderid=folder["id"])["result"] is True
        refused = client.call(f"Run/{TRAIN}", {"selectedFolder": folder["id"], "triggerWord": "zq", **FAST})
        assert refused["errors"][0]["message"].endswith(
            "holds 107 files, more than the 104 a training reads (up to 2 pictures, a caption each, and a few more): "
            "keep the training set in a folder of its own")
