"""The realtime socket: ``{"type": "task_info", "tasktoken": ...}`` in, one frame per event out.

One subscription to the event bus serves every connection. Events arrive on the publisher's
thread and hop onto the event loop; each frame is serialised once and offered to every
subscriber's outbox. An outbox never blocks the publisher, and never grows past a bound: a client
that keeps up gets every progress frame, but once a few of one task's wait unsent the newest takes
the last one's place, and progress beyond the outbox's own bound is dropped, so a slow client loses
intermediate progress; it never drops any other frame (a lifecycle or final frame, an error
reply) but closes the connection instead, for the client to follow its tasks anew. A client that
sends more invalid frames than it may is closed too. Whatever a closing connection's client has
not read within CLOSE_SECONDS is let go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from typing import NamedTuple

from prometheus_client import Gauge
from starlette.status import WS_1008_POLICY_VIOLATION, WS_1011_INTERNAL_ERROR
from starlette.websockets import WebSocket, WebSocketDisconnect

from fluxhost.events import EventBus, TaskEvent
from fluxhost.http.offload import Offload
from fluxhost.limits import LocalRequestRate, RateLimited
from fluxhost.operations import Operations
from fluxhost.statuses import LOG_EVENTS, TERMINAL, WORKER_PATH, Status
from fluxhost.store.database import DATABASE_FAULTS
from fluxhost.store.records import TaskView
from fluxhost.wiro import messages
from fluxhost.wiro.render import error_frame_text, event_frame_text, final_frame_text, frame_text

log = logging.getLogger(__name__)

MAX_PROGRESS_FRAMES = 16  # per connection, waiting to be sent
MAX_TASK_PROGRESS_FRAMES = 4  # per task and connection, waiting to be sent
MAX_QUEUED_FRAMES = 256  # per connection, of every kind, waiting to be sent
MAX_INVALID_FRAMES = 20  # per connection: this many at once, and as many more each minute
CLOSE_SECONDS = 5.0  # how long a closing connection's client has to read its last frames
MAX_MESSAGE_BYTES = 4096
FINAL_READ_DELAYS = (0.5, 1.0, 2.0, 4.0)
"""Seconds before each new try at reading an ended task for its final frame, after the first failed."""
SOCKET_TOKEN = re.compile(r"[A-Za-z0-9]{1,64}")  # what a task's socket token can be (random_token's letters)
_ORDER = {status: index for index, status in enumerate(WORKER_PATH)}


class Closing(NamedTuple):
    """How the server ends a connection: the close frame's code and reason."""

    code: int
    reason: str = ""


class Outbox:
    """Frames waiting for one connection, then, once it is to end, how it ends (``closing``)."""

    def __init__(self) -> None:
        self._frames: deque[tuple[int | None, str]] = deque()  # (task id of a progress frame, text)
        self._ready = asyncio.Event()
        self.closing: asyncio.Future[Closing] = asyncio.get_running_loop().create_future()

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, text: str, progress_of: int | None = None) -> None:
        """Queue a frame; one of a closing connection goes nowhere. Past the bounds a progress frame
        replaces its task's last unsent one, or is dropped, and any other frame closes the
        connection. A replacing frame is queued last, as it came: never ahead of a frame of its task
        queued after the one it replaces (its full log, say)."""
        if self.closing.done():
            return
        if progress_of is not None:
            waiting = [i for i, (task, _) in enumerate(self._frames) if task is not None]
            own = [i for i in waiting if self._frames[i][0] == progress_of]
            full = len(waiting) >= MAX_PROGRESS_FRAMES or len(self._frames) >= MAX_QUEUED_FRAMES
            if own and (full or len(own) >= MAX_TASK_PROGRESS_FRAMES):
                del self._frames[own[-1]]  # newest progress wins over the last unsent
            elif full:
                return
        elif len(self._frames) >= MAX_QUEUED_FRAMES:
            self.close(WS_1008_POLICY_VIOLATION, messages.TOO_MANY_UNREAD)
            return
        self._frames.append((progress_of, text))
        self._ready.set()

    def close(self, code: int, reason: str = "") -> None:
        """End the connection once the frames already waiting are sent (the first call decides how)."""
        if not self.closing.done():
            self.closing.set_result(Closing(code, reason))
            self._ready.set()

    async def get(self) -> str | None:
        """The next frame to send; None once the connection is closing and every frame is sent."""
        while not self._frames:
            if self.closing.done():
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()[1]


class Subscriber:
    """One socket connection and where each task it follows has got to."""

    def __init__(self, websocket: WebSocket):
        self.websocket = websocket
        self.outbox = Outbox()
        self.position: dict[int, int] = {}  # task id -> index of the last lifecycle frame sent
        self.finished: set[int] = set()
        self.tokens: set[str] = set()  # the tasks it follows

    def offer(self, event: TaskEvent, text: str) -> None:
        """Queue the frame of ``event`` unless it is old news: after the task's final frame, or a
        lifecycle frame behind one already sent."""
        if event.task_id in self.finished:
            return
        if event.type == Status.OUTPUT:
            self.outbox.put(text, progress_of=event.task_id)
            return
        if event.type in TERMINAL:
            self.finished.add(event.task_id)
        elif event.type not in LOG_EVENTS:
            index = _ORDER.get(event.type, -1)
            if index <= self.position.get(event.task_id, -1):
                return  # already told (a late subscriber's state frame overtook it)
            self.position[event.task_id] = index
        self.outbox.put(text)

    async def send_loop(self) -> None:
        """Send the outbox's frames, then its close frame; until the client leaves."""
        try:
            while (text := await self.outbox.get()) is not None:
                await self.websocket.send_text(text)
            closing = self.outbox.closing.result()
            await self.websocket.close(closing.code, closing.reason)
        except WebSocketDisconnect:
            pass  # the client left: reading learns it too


class SocketHub:
    def __init__(self, operations: Operations, events: EventBus, offload: Offload, connections: Gauge):
        """``connections``: the gauge of open connections."""
        self.operations = operations
        self.events = events
        self.offload = offload
        self.connections = connections
        self._followers: dict[str, set[Subscriber]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe = None
        self._final_reads: set[asyncio.Task] = set()  # held: the loop keeps only weak references

    @property
    def followed_tasks(self) -> int:
        """How many tasks some connection follows now."""
        return len(self._followers)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = self.events.subscribe(self._from_bus)

    def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()

    def _from_bus(self, event: TaskEvent) -> None:
        """On the publisher's thread: render the frame (reading the store for a final one), then
        hand it to the loop."""
        if event.token not in self._followers or self._loop is None:
            return
        if event.type in TERMINAL:
            try:
                text = self.state_text(self.operations.get(event.task_id), event)
            except DATABASE_FAULTS:
                self._loop.call_soon_threadsafe(self._read_final_later, event)
                return
        else:
            text = event_frame_text(event)
        self._loop.call_soon_threadsafe(self._deliver, event, text)

    def _read_final_later(self, event: TaskEvent) -> None:
        reading = asyncio.create_task(self._deliver_final(event))
        self._final_reads.add(reading)
        reading.add_done_callback(self._final_reads.discard)

    async def _deliver_final(self, event: TaskEvent) -> None:
        """The final frame of an ended task whose read failed: read again, a few times; past them,
        the bare end (its status, without its outputs: Task/Detail has them), so that no follower
        waits for ever."""
        for delay in FINAL_READ_DELAYS:
            await asyncio.sleep(delay)
            try:
                task = await self.offload.run(self.operations.get, event.task_id)
            except DATABASE_FAULTS:
                continue
            self._deliver(event, self.state_text(task, event))
            return
        log.warning("task %s ended; its final frame goes without its outputs: its record could not be read",
                    event.task_id)
        self._deliver(event, frame_text(event.task_id, event.token, event.type))

    def state_text(self, task: TaskView | None, event: TaskEvent) -> str:
        """The frame telling where a task stands: its final frame once it has ended."""
        if task is None:
            return frame_text(event.task_id, event.token, event.type)
        if task.ended:
            return final_frame_text(task, self.operations.files)
        return frame_text(task.id, task.socket_token, task.status)

    def _deliver(self, event: TaskEvent, text: str) -> None:
        followers = self._followers.get(event.token, set())
        for subscriber in list(followers):
            subscriber.offer(event, text)
        if event.type in TERMINAL:
            for subscriber in list(followers):
                self._let_go(subscriber, event.token, event.task_id)

    def _let_go(self, subscriber: Subscriber, token: str, task_id: int) -> None:
        """Stop following a task whose final frame ``subscriber`` has (nothing comes after it): a
        connection that follows task after task for days keeps nothing of those that ended."""
        followers = self._followers.get(token, set())
        followers.discard(subscriber)
        if not followers:
            self._followers.pop(token, None)
        subscriber.tokens.discard(token)
        subscriber.position.pop(task_id, None)
        subscriber.finished.discard(task_id)

    async def follow(self, subscriber: Subscriber, token: str) -> bool:
        """Start sending the events of the task behind ``token`` to ``subscriber``, beginning with
        its current state; False when there is no such task."""
        if not SOCKET_TOKEN.fullmatch(token):  # no task's: some (a lone surrogate) no store can even look up
            return False
        # Registered before the state is read: an event that overtakes it is dropped as old.
        self._followers.setdefault(token, set()).add(subscriber)
        subscriber.tokens.add(token)
        task = await self.offload.run(self.operations.follow, token)
        if task is None:
            return False
        if token not in subscriber.tokens:
            return True  # it ended meanwhile, and the final frame is queued
        state = TaskEvent(task.id, task.socket_token, task.status)
        subscriber.offer(state, self.state_text(task, state))
        if state.type in TERMINAL:
            self._let_go(subscriber, token, task.id)
        return True

    def forget(self, subscriber: Subscriber) -> None:
        for token in subscriber.tokens:
            followers = self._followers.get(token, set())
            followers.discard(subscriber)
            if not followers:
                self._followers.pop(token, None)

    async def serve(self, websocket: WebSocket) -> None:
        """One connection, until the client leaves or its outbox closes it. A closing connection's
        client has CLOSE_SECONDS to read the frames queued before the close frame and that frame;
        then the connection is let go of, and with it whatever the client left unread."""
        await websocket.accept()
        subscriber = Subscriber(websocket)
        closing = subscriber.outbox.closing
        sender = asyncio.create_task(subscriber.send_loop())
        reader = asyncio.create_task(self.read(subscriber))
        self.connections.inc()
        try:
            await asyncio.wait((reader, closing), return_when=asyncio.FIRST_COMPLETED)
            failure = reader.exception() if reader.done() else None
            if failure is not None:
                subscriber.outbox.close(WS_1011_INTERNAL_ERROR)
            if closing.done():
                await asyncio.wait((sender,), timeout=CLOSE_SECONDS)
            if failure is not None:
                raise failure
        finally:
            reader.cancel()
            sender.cancel()
            self.connections.dec()
            self.forget(subscriber)

    async def read(self, subscriber: Subscriber) -> None:
        """Read the client's frames and follow the tasks they ask for, answering each invalid frame
        with an error frame, until the client leaves or the connection is to close: after a token
        no task has, or after more invalid frames than MAX_INVALID_FRAMES allows."""
        outbox = subscriber.outbox
        invalid_frames = LocalRequestRate(MAX_INVALID_FRAMES)  # a token bucket; its one key is this connection
        while not outbox.closing.done():
            message = await subscriber.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                token = requested_token(message.get("text") or message.get("bytes"))
            except FrameError as error:
                try:
                    invalid_frames.take(0)
                except RateLimited:
                    outbox.close(WS_1008_POLICY_VIOLATION, messages.too_many_invalid_frames(MAX_INVALID_FRAMES))
                    return
                outbox.put(error_frame_text(str(error)))
                continue
            if not await self.follow(subscriber, token):
                outbox.put(error_frame_text(messages.NO_TASK, code=1))
                outbox.close(WS_1008_POLICY_VIOLATION)


class FrameError(ValueError):
    """A client frame the socket cannot act on; the message is sent back in an error frame."""


def requested_token(raw: str | bytes | None) -> str:
    """The task token of a ``task_info`` frame."""
    if raw is None or len(raw) > MAX_MESSAGE_BYTES:
        raise FrameError(messages.FRAME_TOO_LARGE)
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        raise FrameError(messages.FRAME_NOT_OBJECT) from None
    if not isinstance(frame, dict):
        raise FrameError(messages.FRAME_NOT_OBJECT)
    if frame.get("type") != "task_info":
        raise FrameError(messages.FRAME_UNKNOWN)
    token = frame.get("tasktoken")
    if not isinstance(token, str) or not token.strip():
        raise FrameError(messages.FRAME_TOKEN_REQUIRED)
    return token.strip()
