"""What the hosted API's official clients (its MCP server, its n8n node, its SDKs) send and read."""

import asyncio
import json
import time

import pytest
import websockets

from tests.helpers import SLUG


@pytest.mark.parametrize(
    ("search", "found"),
    [("flux image", 1), ("FLUX Text-To-Image", 1), ("black-forest-labs pro", 1), ("image flux pro 1.1", 1),
     ("", 1), ("flux video", 0), ("nothing-like-it", 0)],
)
def test_tool_search_matches_every_word_anywhere(client, search, found):
    assert client.call("Tool/List", {"search": search})["total"] == found


def test_tool_explore_groups_the_served_tools_by_category(client):
    answer = client.call("Tool/Explore", {})
    assert answer["result"] is True and answer["errors"] == []
    groups = {group["id"]: group for group in answer["explore"]}
    assert set(groups) == {"flux", "text-to-image"}
    listed = client.call("Tool/List", {"summary": "true"})["tool"]
    for group in groups.values():
        assert group["title"] and group["total"] == str(len(group["tools"])) == "1"
        assert group["tools"] == listed  # Tool/List's item shape


def test_tool_entries_carry_what_this_server_measured(client):
    [tool] = client.call("Tool/List", {})["tool"]
    assert tool["taskstat"] == {"runcount": 0, "successcount": "0", "errorcount": "0", "lastruntime": "0"}
    assert "computingtime" not in tool  # nothing measured yet: no made-up figure
    assert json.loads(tool["dynamicprice"]) == [{"inputs": {}, "price": 0, "priceMethod": "cpr"}]

    done = client.wait(client.run()["taskid"])
    [tool] = client.call("Tool/Detail", {"slugowner": "black-forest-labs", "slugproject": "flux-pro-1-1"})["tool"]
    stat = tool["taskstat"]
    assert (stat["runcount"], stat["successcount"], stat["errorcount"]) == (1, "1", "0")
    assert stat["lastruntime"] == done["createtime"]
    seconds = float(tool["computingtime"].removesuffix(" seconds"))
    assert 0 < seconds <= float(done["elapsedseconds"]) + 0.05  # shown to a tenth of a second


def test_the_socket_sends_the_whole_output_once_generation_is_over(server, client):
    run = client.run()

    async def frames() -> list[dict]:
        async with websockets.connect(server.base_url.replace("http://", "ws://") + "/v1") as ws:
            await ws.send(json.dumps({"type": "task_info", "tasktoken": run["socketaccesstoken"]}))
            seen = []
            while not seen or seen[-1]["type"] != "task_postprocess_end":
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return seen

    seen = asyncio.run(frames())
    kinds = [frame["type"] for frame in seen]
    [full] = [frame for frame in seen if frame["type"] == "task_output_full"]
    assert kinds.index("task_output_full") < kinds.index("task_end")
    assert full["message"] == {"raw": client.detail(run["taskid"])["debugoutput"]}
    assert "task_error_full" not in kinds


def test_a_failed_run_sends_its_whole_error(server, client):
    assert server.service.dispatcher.ready.wait(30)

    def broken(requests, on_start, on_step):  # noqa: ARG001
        raise RuntimeError("out of memory (simulated)")

    server.service.dispatcher.worker.models[SLUG].engine.generate_batch = broken
    events = []
    server.service.events.subscribe(events.append)
    task = client.wait(client.run()["taskid"])
    [error] = [event for event in events if event.type == "task_error_full"]
    assert error.text == task["debugerror"] and "out of memory (simulated)" in task["debugerror"]


def test_cancelled_and_killed_tasks_have_an_exit_code_and_an_end_time(slow_client):
    running = slow_client.run()["taskid"]
    queued = slow_client.run()["taskid"]
    slow_client.wait(running, ("task_start",))
    before = int(time.time())
    cancelled = slow_client.call("Task/Cancel", {"taskid": queued})["tasklist"][0]
    killed = slow_client.call("Task/Kill", {"taskid": running})["tasklist"][0]
    for task in (cancelled, killed, slow_client.detail(queued), slow_client.detail(running)):
        assert task["status"] == "task_cancel"
        assert task["pexit"] not in ("", "0")
        assert int(task["endtime"]) >= before and task["endtime"] == task["canceltime"]


def test_error_messages_follow_the_protocol_docs(slow_client):
    running = slow_client.run()["taskid"]
    slow_client.wait(running, ("task_start",))
    unknown = slow_client.call("Task/InputOutputDelete", {"taskid": "999999"})
    assert unknown["errors"] == [{"code": 1, "message": "task-not-exist"}]
    busy = slow_client.call("Task/InputOutputDelete", {"taskid": running})
    assert busy["errors"] == [{"code": 1, "message": "Task must be completed or cancelled before deleting files"}]
    assert slow_client.call("Task/Kill", {"taskid": running})["result"] is True
    again = slow_client.call("Task/Kill", {"taskid": running})
    assert again["result"] is False
    [error] = again["errors"]
    assert error["code"] == 1 and error["message"].startswith("Task could not be killed: ")
    assert slow_client.call("Task/InputOutputDelete", {"taskid": running})["result"] is True


def test_task_list_takes_the_mcp_servers_fields(client):
    client.wait(client.run()["taskid"])
    body = {"type": "model", "sort": "id", "order": "DESC", "start": "0", "limit": "5"}
    assert client.call("Task/List", {**body, "modelName": "flux-pro-1.1"})["total"] == "1"
    assert client.call("Task/List", {**body, "modelName": "flux-pro-1-1"})["total"] == "1"
    assert client.call("Task/List", {**body, "modelName": "FLUX"})["total"] == "1"
    assert client.call("Task/List", {**body, "modelName": "kontext"})["total"] == "0"
    assert client.call("Task/List", {**body, "modelName": "%"})["total"] == "0"
