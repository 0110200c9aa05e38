"""Prompt upsampling through an OpenAI-compatible endpoint (a local one the test starts) and an
in-process tiny language model: what the engine sees, what the task and the image record, and
what happens without a backend or when it fails."""

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from fluxhost.runtime.outputs import embedded_parameters
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, LoopbackServer, ProtocolClient

REWRITE = "A red fox in fresh snow at dawn, low golden light, soft rim light, shallow depth of field"


class ChatServer(LoopbackServer):
    """An OpenAI-compatible chat-completions endpoint on loopback that answers ``reply`` after
    ``delay`` seconds and records what it was sent."""

    def __init__(self, reply: str = REWRITE, delay: float = 0.0):
        self.requests: list[tuple[dict, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append((body, self.headers.get("authorization", "")))
                time.sleep(delay)
                answer = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]})
                self.send_response(200 if self.path == "/v1/chat/completions" else 404)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *args) -> None:
                pass

        super().__init__(Handler, "/v1")


def test_the_rewritten_prompt_is_generated_and_recorded(make_settings):
    with ChatServer() as chat, LiveServer(make_settings(upsampler_url=chat.url, upsampler_model="tiny-chat",
                                                        upsampler_api_key="sk-test")) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        task = client.wait(client.run(prompt="a red fox", promptUpsampling="true", seed="5")["taskid"])
        image = httpx.get(task["outputs"][0]["url"], timeout=30).content
        [tool] = client.call("Tool/Detail", {"slugowner": "black-forest-labs", "slugproject": "flux-pro-1.1"})["tool"]
    assert task["pexit"] == "0" and task["parameters"]["prompt"] == "a red fox"
    assert f"Prompt upsampled by tiny-chat at {chat.url}: {REWRITE}" in task["debugoutput"]
    metadata = embedded_parameters(image)
    assert metadata["prompt"] == REWRITE and metadata["originalPrompt"] == "a red fox"
    [(body, authorization)] = chat.requests
    assert body["model"] == "tiny-chat" and body["seed"] == 5 and authorization == "Bearer sk-test"
    assert body["messages"][-1] == {"role": "user", "content": "a red fox"}
    items = {item["id"]: item for item in tool["parameters"][0]["items"]}
    assert "Available on this server." in items["promptUpsampling"]["description"]
    assert "available" not in items["promptUpsampling"]


def test_without_a_backend_runs_asking_for_it_are_refused(client):
    refused = client.call(f"Run/{SLUG}", {"prompt": "a red fox", "promptUpsampling": "true"})
    assert refused["result"] is False and "FLUXHOST_UPSAMPLER_URL" in refused["errors"][0]["message"]
    assert client.call(f"Run/{SLUG}", {"prompt": "a red fox", "promptUpsampling": "false"})["result"] is True


@pytest.mark.parametrize("fallback", [False, True])
def test_a_backend_that_times_out_fails_the_task_or_falls_back(make_settings, fallback):
    with ChatServer(delay=3.0) as chat, LiveServer(make_settings(
            upsampler_url=chat.url, upsampler_model="slow", upsampler_timeout_seconds=0.5,
            upsampler_fallback=fallback)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        task = client.wait(client.run(prompt="a red fox", promptUpsampling="true")["taskid"])
    if fallback:
        assert task["pexit"] == "0"
        assert "Prompt upsampling failed (slow at" in task["debugoutput"] and "prompt used as given" in task[
            "debugoutput"]
    else:
        assert task["pexit"] != "0" and "did not answer within 0.5s" in task["debugerror"]
        assert "a red fox" not in task["debugerror"]


def test_a_rewrite_is_moderated_too(make_settings):
    with ChatServer(reply="a nude figure on a beach") as chat, LiveServer(make_settings(
            upsampler_url=chat.url, upsampler_model="chat")) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        task = client.wait(client.run(prompt="a figure on a beach", promptUpsampling="true")["taskid"])
    assert task["debugerror"] == "Request Moderated: sexual" and task["outputs"] == []


def test_an_in_process_language_model_rewrites(make_settings, tmp_path_factory):
    from fluxhost.testing.classifiers import tiny_language_model

    model = tiny_language_model(tmp_path_factory.mktemp("lm") / "tiny-lm")
    with LiveServer(make_settings(upsampler_local=str(model))) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        task = client.wait(client.run(prompt="a red fox", promptUpsampling="true")["taskid"])
    assert task["pexit"] == "0", task["debugerror"]
    line = next(line for line in task["debugoutput"].splitlines() if line.startswith("Prompt upsampled by"))
    assert f"{Path(model)} (in process): " in line and len(line.split("(in process): ", 1)[1]) > 0
