"""LoRA adapters through the hosted LoRA tools: from the server's library, a project's upload and a
URL, each changing the picture and undone for the next task, on the real app and engine."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from fluxhost.settings import ModelSettings
from fluxhost.signing import KeyMode
from tests.helpers import LiveServer, ProtocolClient
from tests.test_editing import FileServer, post_files

LORA_TOOL = "wiro/text-to-image-flux-lora"
NO_LORA = {"selectedLoraModel": "", "selectedLoraModelPrivate": "", "selectedLoraModelPrivateUrl": ""}


def picture(task: dict) -> bytes:
    assert task["pexit"] == "0", task["debugerror"]
    [output] = task["outputs"]
    return httpx.get(output["url"], timeout=30).content


@pytest.fixture
def lora_server(make_settings, tiny_weights, tmp_path):
    from fluxhost.testing.loras import write_lora  # torch: imported by the tests that run, not at collection

    library = tmp_path / "loras"
    library.mkdir()
    write_lora(library / "style.safetensors", "diffusers", seed=1)
    (library / "notes.txt").write_text("not an adapter")
    files = {"/xlabs.safetensors": write_lora(tmp_path / "xlabs.safetensors", "xlabs", seed=3).read_bytes(),
             "/page.html": b"<html>not an adapter</html>"}
    models = {LORA_TOOL: ModelSettings(weights=str(tiny_weights), steps=2, max_sequence_length=32, max_batch=4)}
    with FileServer(files) as host, LiveServer(make_settings(models=models, lora_dir=library,
                                                             callback_allowlist="127.0.0.1")) as live:
        yield live, ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE)), host.url, tmp_path


def run(client: ProtocolClient, **loras: str) -> str:
    inputs = {"prompt": "a lighthouse", "seed": "5", "width": 64, "height": 64, "samples": 0, "steps": 0,
              "scale": 0, "selectedModel": "", "selectedModelPrivate": "", **NO_LORA, **loras}
    answer = client.call(f"Run/{LORA_TOOL}", inputs)
    assert answer["result"] is True, answer
    return answer["taskid"]


def test_library_upload_and_url_adapters_each_change_the_picture_and_are_undone(lora_server):
    live, client, host, tmp_path = lora_server
    [tool] = client.call("Tool/Detail", {"slugowner": "wiro", "slugproject": "text-to-image-flux-lora"})["tool"]
    library = next(item for item in tool["parameters"][0]["items"] if item["id"] == "selectedLoraModel")
    assert [option["value"] for option in library["options"]] == ["", "style"]

    from fluxhost.testing.loras import write_lora

    kohya = write_lora(tmp_path / "my kohya.safetensors", "kohya", seed=2).read_bytes()
    [upload] = post_files(client, "File/Upload", {}, {"file": ("my kohya.safetensors", kohya,
                                                               "application/octet-stream")})["list"]
    assert upload["name"] == "my kohya.safetensors"

    base = picture(client.wait(run(client)))
    styled = picture(client.wait(run(client, selectedLoraModel="style")))
    own = picture(client.wait(run(client, selectedLoraModelPrivate=upload["id"])))
    fetched = picture(client.wait(run(client, selectedLoraModelPrivateUrl=f"{host}/xlabs.safetensors")))
    again = picture(client.wait(run(client)))
    assert len({base, styled, own, fetched}) == 4  # every adapter, in every layout, changes the picture
    assert again == base  # and none stays on for the next task
    both = picture(client.wait(run(client, selectedLoraModel="style", selectedLoraModelPrivate=upload["id"])))
    assert both not in (base, styled, own)  # two adapters at once
    half = picture(client.wait(run(client, loras='[{"model": "style", "scale": 0.5}]')))
    weighted = picture(client.wait(run(client, loras=[{"model": "style", "scale": 0.5},
                                                      {"private": upload["id"], "scale": 0.7}])))
    assert len({base, styled, half, weighted, both}) == 5  # each adapter at its own weight


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_tasks_with_different_adapters_queued_together_each_come_out_right(lora_server):
    _live, client, _host, _tmp_path = lora_server
    alone = {name: pixels(picture(client.wait(run(client, **loras))))
             for name, loras in (("none", {}), ("style", {"selectedLoraModel": "style"}))}
    asked = ["none", "style", "none", "style"]
    queued = [run(client, **({"selectedLoraModel": "style"} if name == "style" else {})) for name in asked]
    for name, taskid in zip(asked, queued, strict=True):
        drawn = pixels(picture(client.wait(taskid)))
        other = alone["style" if name == "none" else "none"]
        # as its own adapters draw it alone (a batched picture is within a grey level), never as the others'
        assert np.abs(drawn - alone[name]).max() <= 1 and np.abs(drawn - other).max() > 8, name


@pytest.mark.parametrize(("loras", "message"), [
    ({"selectedLoraModel": "missing"}, "Request parameter [selectedLoraModel] must be one of style"),
    ({"selectedLoraModelPrivate": "0123456789abcdef"}, "Request parameter [selectedLoraModelPrivate] names no LoRA"),
    ({"selectedLoraModelPrivateUrl": "http://10.1.2.3/a.safetensors"},
     "Request parameter [selectedLoraModelPrivateUrl] "),
])
def test_adapters_that_cannot_be_had_are_refused_at_run(lora_server, loras, message):
    _live, client, _host, _tmp_path = lora_server
    inputs = {"prompt": "a lighthouse", **NO_LORA, **loras}
    answer = client.call(f"Run/{LORA_TOOL}", inputs)
    assert answer["result"] is False and answer["errors"][0]["message"].startswith(message), answer


def test_a_url_that_is_no_adapter_fails_the_task_with_the_reason(lora_server):
    _live, client, host, _tmp_path = lora_server
    task = client.wait(run(client, selectedLoraModelPrivateUrl=f"{host}/page.html"))
    assert task["pexit"] == "1" and "not a .safetensors LoRA adapter" in task["debugerror"]
