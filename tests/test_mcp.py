"""`fluxhost mcp` driven over stdio by the MCP SDK's own client, as an agent drives it: list the
tools, list the models with their inputs, generate an image (returned inline with its URL), and
kill a running task; every call a task of the server like any other."""

import asyncio
import base64
import io
import json
import os

import pytest
from PIL import Image

from fluxhost.signing import KeyMode
from tests.helpers import FLUXHOST, SLUG, LiveServer, ProtocolClient

mcp_client = pytest.importorskip("mcp.client.stdio")
ClientSession = pytest.importorskip("mcp.client.session").ClientSession


async def agent(base_url: str, api_key: str, api_secret: str, work):
    """Run ``work(session)`` against `fluxhost mcp --server base_url` started as an agent starts it."""
    parameters = mcp_client.StdioServerParameters(
        command=FLUXHOST, args=["mcp", "--server", base_url],
        env={**os.environ, "FLUXHOST_API_KEY": api_key, "FLUXHOST_API_SECRET": api_secret},
    )
    async with mcp_client.stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        return await work(session)


def test_an_agent_generates_an_image_and_kills_a_task(make_settings):
    settings = make_settings(engine="bench", bench_step_ms=100, steps=4, max_batch=1,
                             models={SLUG: {"steps": 4, "exposed_inputs": ["steps"], "max_batch": 1}})
    with LiveServer(settings) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        wiro = ProtocolClient(live.base_url, key)

        async def work(session):
            tools = {tool.name for tool in (await session.list_tools()).tools}
            assert tools >= {"generate_image", "get_task", "wait_for_task", "cancel_task", "kill_task", "list_models"}

            models = json.loads((await session.call_tool("list_models", {})).content[0].text)
            assert models[0]["model"] == SLUG
            assert {"prompt", "aspectRatio", "seed", "steps"} <= {item["id"] for item in models[0]["inputs"]}

            made = await session.call_tool("generate_image", {"prompt": "a blue boat", "seed": 5,
                                                              "aspect_ratio": "1:1"})
            assert not made.is_error, made
            facts = json.loads(made.content[0].text)
            assert (facts["status"], facts["succeeded"], facts["seed"]) == ("task_postprocess_end", True, "5")
            picture = Image.open(io.BytesIO(base64.b64decode(made.content[1].data)))
            assert made.content[1].mime_type == "image/png" and picture.format == "PNG"

            misnamed = await session.call_tool("generate_image", {"prompt": "a boat", "aspectRatio": "16:9"})
            assert misnamed.is_error and "has no argument 'aspectRatio': its arguments are prompt, model, " \
                "aspect_ratio" in misnamed.content[0].text
            wide = await session.call_tool("generate_image", {"prompt": "a boat", "seed": 6, "inputs": {
                "aspectRatio": "16:9", "steps": 2}})  # the model's own input names
            assert not wide.is_error, wide
            facts["wide"] = json.loads(wide.content[0].text)["task"]
            asked = wiro.detail(str(facts["wide"]))["parameters"]
            assert (asked["aspectRatio"], asked["steps"]) == ("16:9", "2"), asked

            running = wiro.run(steps="100")["taskid"]  # 10 s of engine time
            wiro.wait(running, statuses=("task_start",))
            killed = json.loads((await session.call_tool("kill_task", {"task": running})).content[0].text)
            waited = json.loads((await session.call_tool("wait_for_task", {"task": running})).content[0].text)
            refused = await session.call_tool("get_task", {"task": "999999"})
            return facts, running, killed, waited, refused

        facts, running, killed, waited, refused = asyncio.run(
            agent(live.base_url, key.api_key, key.api_secret, work))
        assert facts["images"][0].startswith(live.base_url)
        assert killed["task"] == int(running) and waited["status"] == "task_cancel"
        assert refused.is_error and "There is no task yet." in refused.content[0].text
        assert [task["id"] for task in wiro.call("Task/List", {})["tasklist"]] == [
            running, str(facts["wide"]), str(facts["task"])]  # the misnamed call queued nothing
