"""OpenAI's images API shape at /openai, driven by the official ``openai`` package unmodified:
``url`` and ``b64_json`` answers, n images, sizes, OpenAI's error shape, Bearer tokens that never
let in the public half of a signature key, and the task visible through the hosted protocol."""

import base64
import errno
import io
import os
import threading
import time

import httpx
import pytest
from PIL import Image
from sqlalchemy.exc import OperationalError as DatabaseError

from fluxhost.settings import ModelSettings, Settings
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, ProtocolClient, free_port, held, sent_while_waiting

openai = pytest.importorskip("openai")


def test_the_official_client_generates_with_url_and_b64_json(make_settings):
    with LiveServer(make_settings(steps=2, max_batch=1)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        client = openai.OpenAI(base_url=f"{live.base_url}/openai/v1", api_key=f"{key.api_key}:{key.api_secret}")

        by_url = client.images.generate(model="gpt-image-1", prompt="a red kite", size="512x384",
                                        response_format="url")
        assert by_url.size == "512x384" and len(by_url.data) == 1
        image = Image.open(io.BytesIO(httpx.get(by_url.data[0].url, timeout=10).content))
        assert (image.format, image.size) == ("PNG", (512, 384))

        inline = client.images.generate(model="black-forest-labs/flux-pro-1.1", prompt="two kites", n=2,
                                        size="256x256", response_format="b64_json", output_format="jpeg")
        images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in inline.data]
        assert [(image.format, image.size) for image in images] == [("JPEG", (256, 256))] * 2

        listed = ProtocolClient(live.base_url, key).call("Task/List", {})["tasklist"]
        assert len(listed) == 2 and all(task["pexit"] == "0" for task in listed)  # one task per request


def test_a_task_killed_while_its_answer_waits_is_not_sent_again(make_settings):
    """OpenAI's client sends a request again on 409 and 5xx: an answer about the task it queued
    (killed, failed, not ready in time) tells it not to, or a Kill would be undone by a new task."""
    with LiveServer(make_settings(engine="bench", bench_step_ms=100, steps=100)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        client = openai.OpenAI(base_url=f"{live.base_url}/openai/v1", api_key=f"{key.api_key}:{key.api_secret}")
        protocol = ProtocolClient(live.base_url, key)
        answer: dict[str, Exception] = {}

        def generate() -> None:
            try:
                client.images.generate(prompt="a red kite", size="256x256")
            except openai.APIStatusError as error:
                answer["error"] = error

        waiting = threading.Thread(target=generate)
        waiting.start()
        deadline = time.monotonic() + 30
        while not (listed := protocol.call("Task/List", {})["tasklist"]):
            assert time.monotonic() < deadline, "the request queued no task"
            time.sleep(0.1)
        protocol.wait(listed[0]["id"], statuses=("task_start",))
        assert protocol.call("Task/Kill", {"taskid": listed[0]["id"]})["result"] is True
        waiting.join(60)
        assert isinstance(answer.get("error"), openai.ConflictError), answer
        assert answer["error"].response.headers["x-should-retry"] == "false"
        assert protocol.call("Task/List", {})["total"] == "1"  # not queued again


def test_refusals_come_in_openais_shape(make_settings):
    with LiveServer(make_settings(engine="bench", steps=1, input_max_bytes=10_000)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        base = f"{live.base_url}/openai/v1"

        with pytest.raises(openai.AuthenticationError) as public_half:
            openai.OpenAI(base_url=base, api_key=key.api_key).images.generate(prompt="x")
        assert "API_KEY:API_SECRET" in public_half.value.body["message"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key=f"{key.api_key}:wrong").images.generate(prompt="x")

        client = openai.OpenAI(base_url=base, api_key=f"{key.api_key}:{key.api_secret}")
        for arguments, param in (({"size": "1000x1000"}, "size"), ({"n": 9}, "n"), ({"prompt": ""}, "prompt"),
                                 ({"output_format": "webp"}, "output_format"), ({"prompt": "a\x00b"}, "body")):
            with pytest.raises(openai.BadRequestError) as refused:
                client.images.generate(**{"prompt": "x", **arguments})
            assert refused.value.status_code == 400 and refused.value.body["param"] == param
        answer = httpx.post(f"{base}/images/generations", content=b"{not json", timeout=10,
                            headers={"authorization": f"Bearer {key.api_key}:{key.api_secret}",
                                     "content-type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
        with pytest.raises(openai.APIStatusError) as too_large:
            client.images.generate(prompt="x" * 1_100_000)
        assert too_large.value.status_code == 413 and "too large" in too_large.value.body["message"]

        with pytest.raises(openai.BadRequestError) as blocked:  # a refused prompt is the client's error
            client.images.generate(prompt="a nude portrait in oil")
        assert (blocked.value.body["code"], blocked.value.body["message"]) == (
            "moderation_blocked", "Request Moderated: sexual")


def test_a_database_fault_while_the_answer_waits_is_not_sent_again(make_settings, monkeypatch):
    with LiveServer(make_settings(engine="bench", bench_step_ms=50, steps=20)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        client = openai.OpenAI(base_url=f"{live.base_url}/openai/v1", api_key=f"{key.api_key}:{key.api_secret}")
        look, looks = live.service.operations.get, []

        def locked_once(task_id: int):
            looks.append(task_id)
            if len(looks) == 1:
                raise DatabaseError("SELECT", {}, Exception("database is locked"))
            return look(task_id)

        monkeypatch.setattr(live.service.operations, "get", locked_once)
        with pytest.raises(openai.InternalServerError) as unavailable:
            client.images.generate(prompt="a red kite", size="256x256")
        assert unavailable.value.status_code == 503
        assert unavailable.value.response.headers["x-should-retry"] == "false"
        assert ProtocolClient(live.base_url, key).call("Task/List", {})["total"] == "1"  # not queued again


def test_a_server_without_a_drawing_model_says_so(make_settings):
    models = {"black-forest-labs/flux-kontext-pro": ModelSettings(steps=1, kind="edit")}
    with LiveServer(make_settings(engine="bench", worker_concurrency=0, models=models)) as live:
        key = live.service.keys.create(KeyMode.KEY_ONLY)
        client = openai.OpenAI(base_url=f"{live.base_url}/openai/v1", api_key=key.api_key)
        with pytest.raises(openai.BadRequestError) as refused:
            client.images.generate(prompt="a red kite")
        assert refused.value.body["message"] == "This server serves no text-to-image model."


def test_edits_take_an_image_file_on_an_editing_model(make_settings):
    edit_slug = "black-forest-labs/flux-kontext-pro"
    models = {SLUG: ModelSettings(steps=1), edit_slug: ModelSettings(steps=1, kind="edit")}
    with LiveServer(make_settings(engine="bench", models=models)) as live:
        key = live.service.keys.create(KeyMode.KEY_ONLY)
        client = openai.OpenAI(base_url=f"{live.base_url}/openai/v1", api_key=key.api_key)
        photo = io.BytesIO()
        Image.new("RGB", (640, 480), "orange").save(photo, format="PNG")
        edited = client.images.edit(image=("photo.png", photo.getvalue(), "image/png"), prompt="make it blue",
                                    model="gpt-image-1", response_format="url")
        assert httpx.get(edited.data[0].url, timeout=10).status_code == 200
        task = ProtocolClient(live.base_url, key, signed=False).call("Task/List", {})["tasklist"][0]
        assert (task["modelslugproject"], task["pexit"]) == ("flux-kontext-pro", "0")

        with pytest.raises(openai.BadRequestError) as refused:
            client.images.edit(image=("notes.txt", b"not an image", "text/plain"), prompt="x")
        assert "'image'" in refused.value.body["message"] and refused.value.body["param"] == "image"  # its own name

        def store_fails(*_args) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        once = client.with_options(max_retries=0)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(live.service.files, "save", store_fails)
            with pytest.raises(openai.InternalServerError) as unkept:
                once.images.edit(image=("photo.png", photo.getvalue(), "image/png"), prompt="make it blue")
        assert unkept.value.status_code == 503
        assert unkept.value.body["message"] == "The server could not store a file right now: retry shortly."
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(live.service.files, "read", store_fails)
            with pytest.raises(openai.InternalServerError) as unread:
                once.images.generate(prompt="a red kite", response_format="b64_json")
        assert unread.value.status_code == 503 and unread.value.body["type"] == "server_error"
        assert unread.value.body["message"].endswith("made its image, but the server could not read it right now: "
                                                     "download it from Task/Detail.")
        assert unread.value.response.headers["x-should-retry"] == "false"  # its task ran: sent once


def test_an_inline_answer_reads_its_images_off_the_database_threads(tmp_path):
    """``b64_json`` reads the images from the file store (an object store, perhaps, over the
    network): on the shared threads, while the database's (here only one) serves others."""
    settings = Settings(data_dir=tmp_path, host="127.0.0.1", port=free_port(), engine="bench", api_threads=1,
                        worker_process=False)
    with LiveServer(settings) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        answer = sent_while_waiting(held(live.service.operations.files, "read"), lambda: httpx.post(
            f"{live.base_url}/openai/v1/images/generations", json={"prompt": "x", "response_format": "b64_json"},
            headers={"authorization": f"Bearer {key.api_key}:{key.api_secret}"}, timeout=30),
            ProtocolClient(live.base_url, key))
    assert answer.status_code == 200
    assert Image.open(io.BytesIO(base64.b64decode(answer.json()["data"][0]["b64_json"]))).format == "PNG"
