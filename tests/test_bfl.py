"""BFL's API shape at /bfl, driven as BFL's docs drive it with plain httpx: submit with x-key, poll
polling_url until Ready, download result.sample. The task is an ordinary one: the hosted protocol's
door lists and cancels it. Bad requests get BFL's own error shape, never a 5xx."""

import base64
import errno
import io
import json
import os
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fluxhost.settings import ModelSettings, Settings
from fluxhost.signing import KeyMode
from tests.helpers import LiveServer, ProtocolClient, free_port, held, sent_while_waiting, slow_to_resolve


def poll(polling_url: str, x_key: str, timeout: float = 300) -> dict:
    """The job's result once it is no longer Pending (a loaded machine takes its time loading the
    model for the first job)."""
    deadline = time.monotonic() + timeout
    while True:
        result = httpx.get(polling_url, headers={"x-key": x_key, "accept": "application/json"}, timeout=10).json()
        if result["status"] not in ("Pending",) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_a_bfl_client_needs_only_the_base_url(make_settings):
    with LiveServer(make_settings(steps=2, max_batch=1)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        x_key = f"{key.api_key}:{key.api_secret}"
        base = f"{live.base_url}/bfl"
        submitted = httpx.post(f"{base}/v1/flux-pro-1.1", headers={"x-key": x_key}, timeout=30, json={
            "prompt": "a lighthouse at dawn", "width": 512, "height": 384, "seed": 11, "output_format": "png"})
        assert submitted.status_code == 200, submitted.text
        job = submitted.json()
        assert job["polling_url"] == f"{base}/v1/get_result?id={job['id']}"

        result = poll(job["polling_url"], x_key)
        assert result["status"] == "Ready", result
        assert (result["id"], result["result"]["prompt"], result["result"]["seed"]) == (
            job["id"], "a lighthouse at dawn", 11)
        image = Image.open(io.BytesIO(httpx.get(result["result"]["sample"], timeout=10).content))
        assert (image.format, image.size) == ("PNG", (512, 384))

        protocol = ProtocolClient(live.base_url, key)
        listed = protocol.call("Task/List", {})["tasklist"]
        assert [task["uuid"] for task in listed] == [job["id"]]  # one task core, every door

        assert protocol.call("Task/InputOutputDelete", {"taskid": listed[0]["id"]})["result"] is True
        gone = httpx.get(job["polling_url"], headers={"x-key": x_key}, timeout=10)
        assert gone.status_code == 200, gone.text
        assert gone.json() == {"id": job["id"], "status": "Error", "result": None, "progress": None,
                               "details": {"error": "The task's image was deleted (Task/InputOutputDelete)."}}


def test_bfl_s_ultra_and_kontext_max_names_reach_those_models_where_they_are_served(make_settings):
    served = {f"black-forest-labs/{name}": ModelSettings(steps=1, kind=kind) for name, kind in (
        ("flux-pro-1.1", "text-to-image"), ("flux-pro-1-1-ultra", "text-to-image"), ("flux-kontext-pro", "edit"))}
    with LiveServer(make_settings(engine="bench", worker_concurrency=0, models=served)) as live:
        key = live.service.keys.create(KeyMode.KEY_ONLY)
        project_id = live.service.auth.authenticate_token(key.api_key).project_id
        photo = io.BytesIO()
        Image.new("RGB", (64, 48), "orange").save(photo, format="PNG")
        photo = base64.b64encode(photo.getvalue()).decode()
        for name, slug, body in (("flux-pro-1.1-ultra", "flux-pro-1-1-ultra", {}), ("flux-pro", "flux-pro-1.1", {}),
                                 ("flux-kontext-max", "flux-kontext-pro", {"input_image": photo})):
            job = httpx.post(f"{live.base_url}/bfl/v1/{name}", headers={"x-key": key.api_key}, timeout=10,
                             json={"prompt": "a kite", **body})
            assert job.status_code == 200, job.text
            task = live.service.tasks.find(project_id, uuid=job.json()["id"])
            assert task.model_slug == f"black-forest-labs/{slug}"


def test_an_aspect_ratio_and_the_defaults_follow_bfl(make_settings):
    with LiveServer(make_settings(engine="bench", worker_concurrency=0)) as live:
        key = live.service.keys.create(KeyMode.KEY_ONLY)
        base, headers = f"{live.base_url}/bfl", {"x-key": key.api_key}
        for body, size in (({"prompt": "x", "aspect_ratio": "16:9"}, (1376, 768)), ({"prompt": "x"}, (1024, 768))):
            job = httpx.post(f"{base}/v1/flux-pro-1.1", headers=headers, json=body, timeout=10).json()
            order = live.service.tasks.find(live.service.auth.authenticate_token(key.api_key).project_id,
                                            uuid=job["id"]).order
            assert (order.width, order.height, order.output_format) == (*size, "jpeg")


def test_keys_refusals_and_cancel_through_the_other_door(make_settings):
    settings = make_settings(engine="bench", worker_concurrency=0, max_body_bytes=10_000, input_max_bytes=10_000)
    with LiveServer(settings) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        base = f"{live.base_url}/bfl"

        def submit(x_key: str | None, body: dict, model: str = "flux-pro-1.1") -> httpx.Response:
            headers = {"x-key": x_key} if x_key else {}
            return httpx.post(f"{base}/v1/{model}", headers=headers, json=body, timeout=10)

        public_half = submit(key.api_key, {"prompt": "x"})
        assert public_half.status_code == 403 and "API_KEY:API_SECRET" in public_half.json()["detail"]
        assert submit(f"{key.api_key}:wrong", {"prompt": "x"}).status_code == 403
        assert submit(None, {"prompt": "x"}).status_code == 403
        x_key = f"{key.api_key}:{key.api_secret}"
        assert submit(x_key, {"prompt": "x"}, model="flux-nothing").json() == {"detail": "Not Found"}
        invalid = submit(x_key, {"prompt": "x", "width": 1000})
        assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "width"]
        unsupported = submit(x_key, {"prompt": "x", "aspect_ratio": "7:3"})
        assert unsupported.status_code == 422 and "aspect_ratio" in unsupported.json()["detail"]  # its own field name
        assert submit(x_key, {"prompt": ""}).status_code == 422
        # PostgreSQL refuses a NUL character, and no encoder takes a lone surrogate: refused at the door.
        for unstorable in (b'{"prompt": "a\\u0000b"}', b'{"prompt": "a fox \\ud83e"}'):
            refused = httpx.post(f"{base}/v1/flux-pro-1.1", content=unstorable, timeout=10,
                                 headers={"x-key": x_key, "content-type": "application/json"})
            assert refused.status_code == 422, refused.text
        assert httpx.post(f"{base}/v1/flux-pro-1.1", headers={"x-key": x_key}, content=b"{not json",
                          timeout=10).status_code == 422
        too_large = submit(x_key, {"prompt": "x" * 40_000})
        assert (too_large.status_code, too_large.json()) == (
            413, {"detail": "The request body is too large: at most 30000 bytes."})
        streamed = httpx.post(f"{base}/v1/flux-pro-1.1", headers={"x-key": x_key, "content-type": "application/json"},
                              content=(b"x" * 1000 for _ in range(40)), timeout=10)
        assert streamed.status_code == 413

        job = submit(x_key, {"prompt": "to cancel"}).json()
        wiro = ProtocolClient(live.base_url, key)
        taskid = wiro.call("Task/List", {})["tasklist"][0]["id"]
        assert wiro.call("Task/Cancel", {"taskid": taskid})["result"] is True
        cancelled = poll(job["polling_url"], x_key)
        assert (cancelled["status"], cancelled["details"]) == ("Error", {"error": "The task was cancelled."})
        missing = httpx.get(f"{base}/v1/get_result", params={"id": "nope"}, headers={"x-key": x_key}, timeout=10)
        assert missing.json()["status"] == "Task not found"
        other = live.service.keys.create(KeyMode.KEY_ONLY)  # another project: not its task
        assert poll(job["polling_url"], other.api_key)["status"] == "Task not found"


def test_an_editing_model_takes_input_image_under_bfls_name(make_settings):
    models = {"black-forest-labs/flux-kontext-pro": ModelSettings(steps=1, kind="edit")}
    with LiveServer(make_settings(engine="bench", models=models)) as live:
        key = live.service.keys.create(KeyMode.KEY_ONLY)
        photo = io.BytesIO()
        Image.new("RGB", (640, 480), "orange").save(photo, format="PNG")
        submit = f"{live.base_url}/bfl/v1/flux-kontext-max"  # BFL's other Kontext name: the served one
        job = httpx.post(submit, headers={"x-key": key.api_key}, timeout=30, json={
            "prompt": "make it blue", "input_image": base64.b64encode(photo.getvalue()).decode()}).json()
        assert poll(job["polling_url"], key.api_key)["status"] == "Ready"
        refused = httpx.post(submit, headers={"x-key": key.api_key}, json={"prompt": "x", "input_image": "%%"},
                             timeout=10)
        assert refused.status_code == 422 and "input_image must be base64" in refused.json()["detail"]

        def disk_full(*_args) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(live.service.files, "save", disk_full)
            unkept = httpx.post(submit, headers={"x-key": key.api_key}, timeout=30, json={
                "prompt": "make it blue", "input_image": base64.b64encode(photo.getvalue()).decode()})
        assert unkept.status_code == 503, unkept.text
        assert unkept.json() == {"detail": "The server could not store a file right now: retry shortly."}


def one_database_thread(tmp_path) -> Settings:
    """An editing model on the bench engine, no worker, and one database thread for the API."""
    models = {"black-forest-labs/flux-kontext-pro": ModelSettings(steps=1, kind="edit")}
    return Settings(data_dir=tmp_path, host="127.0.0.1", port=free_port(), engine="bench", worker_concurrency=0,
                    api_threads=1, models=models)


def test_an_input_image_url_resolves_its_host_off_the_database_threads(tmp_path):
    """BFL's ``input_image`` by URL (as sent, spaces around it) is fetched on the shared threads:
    a slow DNS answer leaves the database's thread (here only one) to the other requests."""
    with LiveServer(one_database_thread(tmp_path)) as live:
        key = live.service.keys.create(KeyMode.KEY_ONLY)
        answer = sent_while_waiting(slow_to_resolve("slow.example.test"), lambda: httpx.post(
            f"{live.base_url}/bfl/v1/flux-kontext-pro", headers={"x-key": key.api_key}, timeout=30,
            json={"prompt": "make it blue", "input_image": " https://slow.example.test/a.png"}),
            ProtocolClient(live.base_url, key, signed=False))
    assert answer.status_code == 422 and "cannot be resolved" in answer.json()["detail"]


def test_an_input_image_sent_inline_is_kept_off_the_database_threads(tmp_path):
    """A base64 ``input_image`` is kept in the file store (a disk, an object store): on the shared
    threads, while the database's (here only one) serves the other requests."""
    photo = io.BytesIO()
    Image.new("RGB", (64, 48), "orange").save(photo, format="PNG")
    with LiveServer(one_database_thread(tmp_path)) as live:
        key = live.service.keys.create(KeyMode.KEY_ONLY)
        answer = sent_while_waiting(held(live.service.operations.files, "save"), lambda: httpx.post(
            f"{live.base_url}/bfl/v1/flux-kontext-pro", headers={"x-key": key.api_key}, timeout=30,
            json={"prompt": "make it blue", "input_image": base64.b64encode(photo.getvalue()).decode()}),
            ProtocolClient(live.base_url, key, signed=False))
    assert answer.status_code == 200 and "polling_url" in answer.json()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=3), max_leaves=8)
fields = st.sampled_from(["prompt", "width", "height", "aspect_ratio", "seed", "prompt_upsampling",
                          "safety_tolerance", "output_format", "webhook_url", "webhook_secret", "other"])


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.dictionaries(fields, json_values, max_size=6),
       model=st.sampled_from(["flux-pro-1.1", "x", "get_result"]), keyed=st.booleans())
def test_any_body_gets_bfls_shape_never_a_5xx(bfl_server, body, model, keyed):
    live, x_key = bfl_server
    headers = {"content-type": "application/json", **({"x-key": x_key} if keyed else {})}
    answer = httpx.post(f"{live.base_url}/bfl/v1/{model}", content=json.dumps(body), headers=headers, timeout=10)
    assert answer.status_code in (200, 403, 404, 405, 422), answer.text
    shape = answer.json()
    assert ("id" in shape and "polling_url" in shape) if answer.status_code == 200 else "detail" in shape


@pytest.fixture(scope="module")
def bfl_server(tmp_path_factory):
    """One server for every example: no worker, so accepted tasks only queue."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("bfl"), port=free_port(), engine="bench",
                        worker_concurrency=0)
    with LiveServer(settings) as live:
        yield live, live.service.keys.create(KeyMode.KEY_ONLY).api_key
