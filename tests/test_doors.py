"""Doors: a second one mounted beside the hosted protocol calls the same service operations; no
door's database work holds up the event loop, and no wait on the outside world holds up the
database threads."""

import asyncio
import sqlite3
import threading

import httpx
import pytest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fluxhost.orders import RunRequest
from fluxhost.service import Service
from fluxhost.settings import ModelSettings, Settings
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, ProtocolClient, free_port, sent_while_waiting, slow_to_resolve
from tests.test_socket import follow, socket_url

LORA_TOOL = "wiro/text-to-image-flux-lora"


def plain_door(service: Service) -> Starlette:
    """A door of another shape: ``POST /generate {"text": ...}`` with a bearer key, answering
    ``{"job": id, "follow": token}``; its refusals are its own."""

    def generate(api_key: str, text: str) -> JSONResponse:
        caller = service.operations.caller(api_key, None, None)
        tool = service.operations.tool(*SLUG.split("/"))
        request = RunRequest(prompt=text, seed=3, parameters={"prompt": text, "seed": "3"})
        task = service.operations.run(caller, tool, request)
        return JSONResponse({"job": task.id, "follow": task.socket_token}, status_code=201)

    async def endpoint(request: Request) -> JSONResponse:
        body = await request.json()
        api_key = request.headers.get("authorization", "").removeprefix("Bearer ")
        return await run_in_threadpool(generate, api_key, body["text"])

    return Starlette(routes=[Route("/generate", endpoint, methods=["POST"])])


def test_a_second_door_runs_tasks_the_hosted_protocol_sees(make_settings):
    with LiveServer(make_settings(), doors={"/plain": plain_door}) as live:
        key = live.service.keys.create(KeyMode.KEY_ONLY)
        answer = httpx.post(f"{live.base_url}/plain/generate", json={"text": "a heron at dawn"},
                            headers={"authorization": f"Bearer {key.api_key}"}, timeout=30)
        assert answer.status_code == 201
        job = answer.json()

        frames = asyncio.run(follow(socket_url(live), job["follow"]))
        assert frames[-1]["type"] == "task_postprocess_end" and frames[-1]["pexit"] == "0"

        listed = ProtocolClient(live.base_url, key, signed=False).call("Task/List", {})
        [task] = listed["tasklist"]
        assert task["id"] == str(job["job"]) and task["parameters"] == {"prompt": "a heron at dawn", "seed": "3"}
        assert task["status"] == "task_postprocess_end" and len(task["outputs"]) == 1

        # The hosted protocol keeps its own error shape beside the new door.
        assert httpx.post(f"{live.base_url}/v1/Nowhere", timeout=10).json()["errors"][0]["message"] == (
            "Error parsing url.")


def test_the_loop_answers_while_the_database_is_locked(make_settings):
    settings = make_settings(worker_concurrency=0)
    if settings.database_url:
        pytest.skip("locks the embedded SQLite file")
    with LiveServer(settings) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        locker = sqlite3.connect(live.settings.data_dir / "fluxhost.db", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process's writer: every write here now waits
        answers: list[dict] = []
        run = threading.Thread(target=lambda: answers.append(client.run()))
        run.start()
        try:
            run.join(0.5)
            assert run.is_alive(), "the Run should be waiting for the database"
            # Meanwhile the loop serves what needs no database, at once.
            refused = httpx.post(f"{live.base_url}/v1/Nowhere", timeout=2)
            assert refused.json()["errors"][0]["message"] == "Error parsing url."
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        run.join(30)
        assert answers and answers[0]["taskid"] == "1"


def test_database_threads_follow_the_database_and_where_the_worker_runs():
    assert Settings(database_url="sqlite:///x.db").resolved_api_threads == 2  # the worker in a child process
    assert Settings(database_url="sqlite:///x.db", worker_process=False).resolved_api_threads == 1
    assert Settings(database_url="sqlite:///x.db", worker_process=False, worker_concurrency=0).resolved_api_threads == 2
    assert Settings(database_url="postgresql://db/fluxhost").resolved_api_threads == 8
    assert Settings(database_url="postgresql://db/fluxhost", api_threads=3).resolved_api_threads == 3


def test_a_run_whose_adapter_url_is_slow_to_resolve_leaves_the_database_thread_free(tmp_path):
    """Resolving a host name waits on the outside world: a Run naming an adapter by URL in its
    ``loras`` does so on the shared threads, never on the database's (here only one)."""
    settings = Settings(data_dir=tmp_path, host="127.0.0.1", port=free_port(), engine="bench", worker_concurrency=0,
                        api_threads=1, models={LORA_TOOL: ModelSettings()})
    with LiveServer(settings) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        inputs = {"prompt": "p", "loras": '[{"url": "https://slow.example.test/a.safetensors"}]'}
        answer = sent_while_waiting(slow_to_resolve("slow.example.test"),
                                    lambda: client.call(f"Run/{LORA_TOOL}", inputs), client)
    assert answer["result"] is False and "cannot be resolved" in answer["errors"][0]["message"]
