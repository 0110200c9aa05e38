"""The realtime socket at /v1, spoken to with a real WebSocket client."""

import asyncio
import base64
import contextlib
import io
import json
import os
import socket as socket_module
import time
from types import SimpleNamespace

import pytest
import websockets
from PIL import Image
from prometheus_client import Gauge
from sqlalchemy.exc import OperationalError

from fluxhost.app import CONNECTIONS_CLOSE_SECONDS, UVICORN_OPTIONS
from fluxhost.events import LocalEventBus, Progress, TaskEvent
from fluxhost.signing import KeyMode
from fluxhost.statuses import TERMINAL, Status
from fluxhost.wiro import messages, socket
from fluxhost.wiro.socket import (
    MAX_INVALID_FRAMES,
    MAX_PROGRESS_FRAMES,
    MAX_QUEUED_FRAMES,
    MAX_TASK_PROGRESS_FRAMES,
    SocketHub,
    Subscriber,
)
from tests.helpers import SLUG, LiveServer, ProtocolClient

LIFECYCLE = ["task_queue", "task_accept", "task_preprocess_start", "task_preprocess_end", "task_assign",
             "task_start", "task_end", "task_postprocess_start", "task_postprocess_end"]


def socket_url(server) -> str:
    return server.base_url.replace("http://", "ws://") + "/v1"


async def follow(url: str, token: str, *, greet: bool = True) -> list[dict]:
    """Every frame for ``token`` until its terminal one."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "task_info", "tasktoken": token}))
        frames = []
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
            frames.append(frame)
            if frame["type"] in TERMINAL:
                return frames


def test_a_run_seen_through_the_socket(server, client):
    blocker = client.run()  # keeps the single worker busy: the task below is still queued when followed
    run = client.run()
    frames = asyncio.run(follow(socket_url(server), run["socketaccesstoken"]))
    assert client.detail(blocker["taskid"])["status"] == "task_postprocess_end"
    assert all(f["tasktoken"] == run["socketaccesstoken"] and f["id"] == run["taskid"] and f["result"] is True
               for f in frames)
    lifecycle = [f["type"] for f in frames if f["type"] not in ("task_output", "task_output_full")]
    assert lifecycle == LIFECYCLE
    assert all(f["message"] is None for f in frames if f["type"] in LIFECYCLE[:-1])

    progress = [f["message"] for f in frames if f["type"] == "task_output"]
    assert progress, "no progress frames"
    assert [int(p["percentage"]) for p in progress] == sorted(int(p["percentage"]) for p in progress)
    assert progress[-1]["percentage"] == "100" and progress[-1]["stepCurrent"] == progress[-1]["stepTotal"] == "4"
    assert {"type", "task", "percentage", "stepCurrent", "stepTotal", "speed", "speedType", "elapsedTime",
            "remainingTime"} <= set(progress[0])
    assert progress[0]["type"] == "progressGenerate" and progress[0]["speedType"] == "it/s"
    starts = [i for i, f in enumerate(frames) if f["type"] == "task_start"][0]
    ends = [i for i, f in enumerate(frames) if f["type"] == "task_end"][0]
    assert all(starts < i < ends for i, f in enumerate(frames) if f["type"] == "task_output")

    final = frames[-1]
    assert final["message"] == client.detail(run["taskid"])["outputs"] and final["pexit"] == "0"


def test_late_subscribers_learn_the_current_state(server, client):
    run = client.run()
    client.wait(run["taskid"])
    [final] = asyncio.run(follow(socket_url(server), run["socketaccesstoken"]))
    assert final["type"] == "task_postprocess_end" and final["message"] == client.detail(run["taskid"])["outputs"]

    blocker = client.run()  # keeps the worker busy, so the next task is still queued when cancelled
    queued = client.run()
    assert client.call("Task/Cancel", {"taskid": queued["taskid"]})["result"] is True
    [cancel] = asyncio.run(follow(socket_url(server), queued["socketaccesstoken"]))
    assert cancel["type"] == "task_cancel" and cancel["message"] is None
    client.wait(blocker["taskid"])


def test_a_subscriber_arriving_mid_run_starts_from_the_current_state(make_settings):
    with LiveServer(make_settings(steps=40)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        run = client.run()
        client.wait(run["taskid"], ("task_start",))
        frames = asyncio.run(follow(socket_url(live), run["socketaccesstoken"]))
    assert frames[0]["type"] == "task_start"
    assert [f["type"] for f in frames if f["type"] not in ("task_output", "task_output_full")] == LIFECYCLE[5:]


def test_unknown_tokens_and_malformed_frames(server, client):
    async def scenario():
        async with websockets.connect(socket_url(server)) as ws:
            for bad in ("not json", "[1, 2]", json.dumps({"type": "hello"}), json.dumps({"type": "task_info"}),
                        b"\x00\x01", "[" * 2000 + "]" * 2000):  # the last past the JSON parser's depth
                await ws.send(bad)
                reply = json.loads(await ws.recv())
                assert reply["type"] == "error" and reply["result"] is False and reply["errors"][0]["message"]
            run = client.run()  # the connection is still good after all that
            await ws.send(json.dumps({"type": "task_info", "tasktoken": run["socketaccesstoken"]}))
            assert json.loads(await ws.recv())["type"] in LIFECYCLE
            await ws.send(json.dumps({"type": "task_info", "tasktoken": "no-such-token"}))
            while (reply := json.loads(await ws.recv()))["type"] != "error":
                pass
            assert reply["errors"] == [{"code": 1, "message": "There is no task yet."}]
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return run

    client.wait(asyncio.run(scenario())["taskid"])


@pytest.mark.parametrize("token", ["\ud800", "a\u0000b", "x" * 3000])
def test_a_token_no_task_could_have_is_answered_as_an_unknown_one(server, token):
    """A lone surrogate, for one, cannot even be looked up: the connection ended with 1011 and no word."""

    async def scenario():
        async with websockets.connect(socket_url(server)) as ws:
            await ws.send(json.dumps({"type": "task_info", "tasktoken": token}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return reply, closed.value.rcvd.code

    reply, code = asyncio.run(scenario())
    assert (reply["errors"], code) == ([{"code": 1, "message": "There is no task yet."}], 1008)


def test_the_final_frame_comes_with_its_outputs_though_the_first_read_of_the_ended_task_failed(
        server, client, monkeypatch):
    """The read on the publisher's thread failed (the database locked for a moment): the final
    frame was never sent, and followers waited for ever."""
    operations, failures = server.service.operations, [OperationalError("SELECT", {}, Exception("database is locked"))]
    get = operations.get

    def get_once_locked(task_id):
        if failures:
            raise failures.pop()
        return get(task_id)

    monkeypatch.setattr(operations, "get", get_once_locked)
    run = client.run()
    frames = asyncio.run(follow(socket_url(server), run["socketaccesstoken"]))
    assert not failures and frames[-1]["type"] == "task_postprocess_end" and frames[-1]["pexit"] == "0"
    assert frames[-1]["message"][0]["url"]


def test_an_ended_task_that_cannot_be_read_still_ends_its_followers_wait(server, client, monkeypatch):
    operations = server.service.operations

    def locked(task_id):
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(socket, "FINAL_READ_DELAYS", (0.01, 0.01))
    monkeypatch.setattr(operations, "get", locked)
    run = client.run()
    final = asyncio.run(follow(socket_url(server), run["socketaccesstoken"]))[-1]
    assert final == {"type": "task_postprocess_end", "id": run["taskid"], "tasktoken": run["socketaccesstoken"],
                     "message": None, "result": True}  # the bare end: Task/Detail has the rest


def stalled_follower(port: int, token: str) -> socket_module.socket:
    """A WebSocket client that follows ``token``, then never reads again (a frozen tab)."""
    connection = socket_module.socket()
    connection.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, 4096)  # before connecting: the window
    connection.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    connection.sendall(f"GET /v1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += connection.recv(1)
    assert b" 101 " in answer
    payload, mask = json.dumps({"type": "task_info", "tasktoken": token}).encode(), os.urandom(4)
    connection.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        byte ^ mask[index % 4] for index, byte in enumerate(payload)))
    return connection


def test_a_client_that_stopped_reading_does_not_hold_the_server_s_shutdown(make_settings, monkeypatch):
    """Its unsent frames filled the connection's buffers: uvicorn waited for it to end for ever,
    and the service's own shutdown (its tasks released) never began."""
    assert UVICORN_OPTIONS["timeout_graceful_shutdown"] == CONNECTIONS_CLOSE_SECONDS
    monkeypatch.setitem(UVICORN_OPTIONS, "timeout_graceful_shutdown", 1)  # shortened for the test
    live = LiveServer(make_settings(engine="bench", bench_step_ms=1_500, worker_process=False,
                                    shutdown_grace_seconds=0)).__enter__()
    client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
    run = client.run()
    client.wait(run["taskid"], ("task_start",), timeout=30)
    follower = stalled_follower(live.settings.port, run["socketaccesstoken"])
    try:
        deadline = time.monotonic() + 10
        while not live.app.state.socket_hub.followed_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        preview = "data:image/jpeg;base64," + "A" * 12_000
        for step in range(1, 400):  # more than the buffers hold
            live.service.events.publish(TaskEvent(int(run["taskid"]), run["socketaccesstoken"], Status.OUTPUT,
                                                  Progress.measure(step, 400, step * 0.1), preview=preview))
            time.sleep(0.002)
        time.sleep(1)  # for the server to write what it can
        unsent = max(open_one.transport.get_write_buffer_size() for open_one in live.server.server_state.connections)
        assert unsent > 0  # the follower's buffers are full: the server holds bytes it cannot send
        live.server.should_exit = True  # what SIGTERM does
        live.thread.join(20)
        assert not live.thread.is_alive(), "the server waited on a client that stopped reading"
    finally:
        follower.close()
        live.__exit__()


def test_one_connection_follows_several_tasks(server, client):
    runs = [client.run(), client.run()]

    async def scenario():
        async with websockets.connect(socket_url(server)) as ws:
            for run in runs:
                await ws.send(json.dumps({"type": "task_info", "tasktoken": run["socketaccesstoken"]}))
            finals = {}
            while len(finals) < 2:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if frame["type"] in TERMINAL:
                    finals[frame["id"]] = frame
            return finals

    finals = asyncio.run(scenario())
    assert set(finals) == {run["taskid"] for run in runs}
    assert all(frame["type"] == "task_postprocess_end" for frame in finals.values())


def test_one_connection_following_task_after_task_keeps_none_that_ended(server, client):
    hub = server.app.state.socket_hub

    async def scenario():
        async with websockets.connect(socket_url(server)) as ws:
            async def final_frame(token: str) -> dict:
                await ws.send(json.dumps({"type": "task_info", "tasktoken": token}))
                while (frame := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] not in TERMINAL:
                    pass
                return frame

            tokens, finals = [], []
            for _ in range(3):
                tokens.append(client.run()["socketaccesstoken"])
                finals.append(await final_frame(tokens[-1]))
                assert hub.followed_tasks == 0  # let go of once its final frame was queued
            asked_again = await final_frame(tokens[0])  # an ended task asked for again: its final frame
            return finals, asked_again

    finals, asked_again = asyncio.run(scenario())
    assert [frame["type"] for frame in finals] == ["task_postprocess_end"] * 3
    assert asked_again == finals[0]


def test_a_hundred_subscribers_all_get_the_final_frame(make_settings):
    with LiveServer(make_settings(steps=12)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        run = client.run()

        async def crowd():
            return await asyncio.gather(*(follow(socket_url(live), run["socketaccesstoken"]) for _ in range(100)))

        results = asyncio.run(crowd())
        outputs = client.detail(run["taskid"])["outputs"]
        deadline = time.monotonic() + 10
        while live.app.state.socket_hub.followed_tasks:  # every closed connection is forgotten
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert len(results) == 100
    assert all(frames[-1]["type"] == "task_postprocess_end" and frames[-1]["message"] == outputs
               for frames in results)


def test_progress_frames_carry_a_preview_when_asked(make_settings):
    with LiveServer(make_settings(previews=True)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        run = client.run(aspectRatio="1:1")
        frames = asyncio.run(follow(socket_url(live), run["socketaccesstoken"]))
    previews = [f["preview"] for f in frames if f["type"] == "task_output"]
    assert previews and all(p.startswith("data:image/jpeg;base64,") for p in previews)
    image = Image.open(io.BytesIO(base64.b64decode(previews[-1].split(",", 1)[1])))
    assert image.format == "JPEG" and max(image.size) <= 256


def _progress(task: int, step: int) -> TaskEvent:
    return TaskEvent(task, "a", Status.OUTPUT, Progress.measure(step, 100, 1.0))


async def _waiting(subscriber: Subscriber) -> list[str]:
    frames = []
    while len(subscriber.outbox):
        frames.append(await subscriber.outbox.get())
    return frames


def test_a_slow_subscriber_loses_progress_never_lifecycle():
    async def scenario():
        subscriber = Subscriber(websocket=None)
        subscriber.offer(TaskEvent(1, "a", Status.START), "start-1")
        for step in range(1, 1001):
            subscriber.offer(TaskEvent(1, "a", Status.OUTPUT, Progress.measure(step, 1000, 1.0)), f"progress-1-{step}")
        for task in range(2, 2 + 3 * MAX_PROGRESS_FRAMES):
            subscriber.offer(TaskEvent(task, "b", Status.OUTPUT, Progress.measure(1, 1000, 1.0)), f"progress-{task}")
        subscriber.offer(TaskEvent(1, "a", Status.END), "end-1")
        subscriber.offer(TaskEvent(1, "a", Status.START), "stale-start-1")
        subscriber.offer(TaskEvent(1, "a", Status.POSTPROCESS_END), "final-1")
        subscriber.offer(TaskEvent(1, "a", Status.OUTPUT, Progress.measure(1000, 1000, 1.0)), "after-the-end")
        return await _waiting(subscriber)

    frames = asyncio.run(scenario())
    assert [f for f in frames if not f.startswith("progress")] == ["start-1", "end-1", "final-1"]
    first = [f"progress-1-{step}" for step in range(1, MAX_TASK_PROGRESS_FRAMES)]
    assert [f for f in frames if f.startswith("progress-1-")] == [*first, "progress-1-1000"]  # the newest wins
    assert sum(f.startswith("progress") for f in frames) == MAX_PROGRESS_FRAMES


def test_a_subscriber_that_keeps_up_gets_every_step_even_four_at_once():
    async def scenario():
        subscriber = Subscriber(websocket=None)
        frames = []
        for step in range(1, 13):
            subscriber.offer(TaskEvent(1, "a", Status.OUTPUT, Progress.measure(step, 12, 1.0)), f"progress-{step}")
            if step % 4 == 0:  # what is waiting after every fourth step: all four, or fewer if one was replaced
                frames += await _waiting(subscriber)
        return frames

    assert asyncio.run(scenario()) == [f"progress-{step}" for step in range(1, 13)]


def test_progress_that_replaces_another_never_overtakes_a_later_frame_of_its_task():
    async def scenario():
        subscriber = Subscriber(websocket=None)
        subscriber.offer(TaskEvent(1, "a", Status.START), "start")
        for step in range(1, 5):
            subscriber.offer(_progress(1, step), f"progress-{step}")
        subscriber.offer(TaskEvent(1, "a", Status.OUTPUT_FULL), "log")
        subscriber.offer(_progress(1, 99), "progress-99")  # a fifth waiting: it replaces the fourth
        return await _waiting(subscriber)

    assert asyncio.run(scenario()) == ["start", "progress-1", "progress-2", "progress-3", "log", "progress-99"]


def test_a_full_outbox_takes_the_newest_progress_of_a_task_already_in_it_and_no_other():
    async def scenario():
        subscriber = Subscriber(websocket=None)
        subscriber.offer(_progress(1, 1), "task-1-step-1")
        for task in range(2, MAX_PROGRESS_FRAMES + 1):
            subscriber.offer(_progress(task, 1), f"task-{task}")
        subscriber.offer(_progress(1, 2), "task-1-step-2")  # replaces its first step
        subscriber.offer(_progress(99, 1), "task-99")  # nothing of its own waiting: dropped
        return await _waiting(subscriber)

    assert asyncio.run(scenario()) == [*(f"task-{task}" for task in range(2, MAX_PROGRESS_FRAMES + 1)), "task-1-step-2"]


def test_a_preview_that_fails_does_not_fail_the_task(make_settings):
    with LiveServer(make_settings(previews=True)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        assert live.service.dispatcher.ready.wait(30)
        engine = live.service.dispatcher.worker.models[SLUG].engine

        def broken_preview(*_args):
            raise NotImplementedError("this pipeline has no latent layout we know")

        engine._preview = broken_preview
        client.run()  # a blocker: the task below is still queued when followed
        run = client.run()
        frames = asyncio.run(follow(socket_url(live), run["socketaccesstoken"]))
    progress = [f for f in frames if f["type"] == "task_output"]
    assert progress and all("preview" not in f for f in progress)
    assert frames[-1]["type"] == "task_postprocess_end" and frames[-1]["pexit"] == "0"


def test_a_flood_of_invalid_frames_gets_a_few_replies_then_a_close(server):
    """A client that sends invalid frames without reading is answered MAX_INVALID_FRAMES times, then
    closed: the server queues no reply past those, however many frames come."""

    async def scenario():
        async with websockets.connect(socket_url(server)) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):  # the server may close before the last goes
                for _ in range(3000):
                    await ws.send("not json")
            replies = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    replies.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            return replies, closed.value.rcvd

    replies, close = asyncio.run(scenario())
    assert len(replies) == MAX_INVALID_FRAMES
    assert all(reply["errors"] == [{"code": 0, "message": messages.FRAME_NOT_OBJECT}] for reply in replies)
    assert close.code == 1008 and close.reason == messages.too_many_invalid_frames(MAX_INVALID_FRAMES)


def test_an_outbox_at_its_bound_closes_the_connection_rather_than_grow():
    async def scenario():
        subscriber = Subscriber(websocket=None)
        outbox = subscriber.outbox
        for task in range(1, MAX_QUEUED_FRAMES):
            subscriber.offer(TaskEvent(task, f"t{task}", Status.QUEUE), f"queued-{task}")
        outbox.put("an error reply")  # every kind of frame counts
        subscriber.offer(TaskEvent(1, "t1", Status.OUTPUT, Progress.measure(1, 10, 1.0)), "progress")
        assert len(outbox) == MAX_QUEUED_FRAMES and not outbox.closing.done()  # progress past it is dropped
        subscriber.offer(TaskEvent(1, "t1", Status.ACCEPT), "one frame too many")
        outbox.put("after the close")
        frames = [await outbox.get() for _ in range(len(outbox))]
        assert await asyncio.wait_for(outbox.get(), 1) is None  # sent them all: the close frame is next
        return frames, outbox.closing.result()

    frames, closing = asyncio.run(scenario())
    assert frames == [f"queued-{task}" for task in range(1, MAX_QUEUED_FRAMES)] + ["an error reply"]
    assert closing == (1008, messages.TOO_MANY_UNREAD)


class StalledClient:
    """A WebSocket whose client follows one task, then neither reads nor sends."""

    def __init__(self, token: str):
        self.first = {"type": "websocket.receive", "text": json.dumps({"type": "task_info", "tasktoken": token})}

    async def accept(self) -> None:
        pass

    async def receive(self) -> dict:
        if self.first:
            first, self.first = self.first, None
            return first
        await asyncio.Event().wait()

    async def send_text(self, _text: str) -> None:
        await asyncio.Event().wait()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await asyncio.Event().wait()


class DirectOffload:
    async def run(self, function, *args):
        return function(*args)


def test_a_task_that_ends_while_its_state_is_read_sends_its_final_frame_once():
    task = SimpleNamespace(id=1, socket_token="t1", status=Status.POSTPROCESS_END, ended=True)

    class EndingMeanwhile:
        async def run(self, function, *args):
            hub._deliver(TaskEvent(1, "t1", Status.POSTPROCESS_END), "final")  # the end reaches the hub first
            return function(*args)

    hub = SocketHub(SimpleNamespace(follow=lambda token: task), LocalEventBus(), EndingMeanwhile(),
                    Gauge("socket_connections", "open sockets", registry=None))
    hub.state_text = lambda *_: "final, read from the store"

    async def scenario():
        subscriber = Subscriber(websocket=None)
        assert await hub.follow(subscriber, "t1")
        return await _waiting(subscriber)

    assert asyncio.run(scenario()) == ["final"]
    assert hub.followed_tasks == 0


def test_a_client_that_stops_reading_is_let_go_once_its_outbox_is_full(monkeypatch):
    monkeypatch.setattr(socket, "CLOSE_SECONDS", 0.1)
    task = SimpleNamespace(id=1, socket_token="t1", status=Status.START, ended=False)
    operations = SimpleNamespace(follow=lambda token: task if token == "t1" else None)
    connections = Gauge("socket_connections", "open sockets", registry=None)
    events = LocalEventBus()
    hub = SocketHub(operations, events, DirectOffload(), connections)

    async def scenario():
        hub.start()
        serving = asyncio.create_task(hub.serve(StalledClient("t1")))
        while not hub.followed_tasks:
            await asyncio.sleep(0.01)
        for line in range(MAX_QUEUED_FRAMES + 1):  # whole logs: frames never dropped nor coalesced
            events.publish(TaskEvent(1, "t1", Status.OUTPUT_FULL, text=f"log {line}"))
        await asyncio.wait_for(serving, 5)
        hub.stop()

    asyncio.run(scenario())
    assert hub.followed_tasks == 0 and connections.collect()[0].samples[0].value == 0
