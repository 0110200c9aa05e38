"""Task events are typed records that cross a process boundary unchanged."""

import json
import time
import uuid

from hypothesis import given
from hypothesis import strategies as st
from redis.client import Pipeline
from redis.exceptions import ConnectionError

from fluxhost.events import Progress, RedisEventBus, TaskEvent
from fluxhost.statuses import Status
from fluxhost.wiro.render import event_frame_text

progress = st.builds(Progress.measure, st.integers(1, 100), st.just(100),
                     st.floats(0.001, 1e4, allow_nan=False))
events = st.builds(
    TaskEvent,
    task_id=st.integers(1, 2**62),
    token=st.text(min_size=1, max_size=40),
    type=st.sampled_from(Status),
    progress=st.none() | progress,
    preview=st.none() | st.text(max_size=50),
    text=st.none() | st.text(max_size=200),
    time=st.floats(0, 4e9, allow_nan=False),
)


@given(events)
def test_an_event_survives_its_json_encoding(event):
    decoded = TaskEvent.decode(event.encode())
    assert decoded == event and type(decoded.type) is Status


def test_the_door_renders_progress_in_the_protocols_words():
    event = TaskEvent(7, "tok", Status.OUTPUT, Progress.measure(3, 4, elapsed=1.5))
    frame = json.loads(event_frame_text(TaskEvent.decode(event.encode())))
    assert frame == {
        "type": "task_output", "id": "7", "tasktoken": "tok", "result": True,
        "message": {"type": "progressGenerate", "task": "Generate", "percentage": "75", "stepCurrent": "3",
                    "stepTotal": "4", "speed": "2.00", "speedType": "it/s", "elapsedTime": "2s",
                    "remainingTime": "0s"},
    }


def test_events_through_redis_reach_every_bus_in_order_and_close_sends_what_is_queued(redis_url):
    channel = f"fluxhost:test:{uuid.uuid4().hex}"
    publisher, listener = RedisEventBus(redis_url, channel), RedisEventBus(redis_url, channel)
    heard: list[TaskEvent] = []
    listener.subscribe(heard.append)
    sent = [TaskEvent(task_id, "tok", Status.OUTPUT, Progress.measure(step, 500, 1.0))
            for task_id in (1, 2) for step in range(1, 501)]
    try:
        for event in sent:
            publisher.publish(event)
        publisher.close()  # returns once everything queued is sent
        deadline = time.monotonic() + 10
        while len(heard) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert heard == sent
    finally:
        listener.close()


def test_events_whose_first_publishing_failed_are_published_by_the_next_attempt(redis_url, monkeypatch):
    """redis-py empties a pipeline once it ran, failed or not: a second try sent nothing."""
    channel = f"fluxhost:test:{uuid.uuid4().hex}"
    publisher, listener = RedisEventBus(redis_url, channel), RedisEventBus(redis_url, channel)
    heard: list[TaskEvent] = []
    listener.subscribe(heard.append)
    execute, failures = Pipeline.execute, [ConnectionError("Connection reset by peer")]

    def execute_after_an_outage(pipeline, *args, **kwargs):
        if failures:
            pipeline.reset()  # as a pipeline whose round trip failed is left
            raise failures.pop()
        return execute(pipeline, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", execute_after_an_outage)
    end = TaskEvent(7, "tok", Status.POSTPROCESS_END)
    try:
        publisher.publish(end)
        publisher.close()
        deadline = time.monotonic() + 10
        while not heard and time.monotonic() < deadline:
            time.sleep(0.01)
        assert heard == [end] and not failures
    finally:
        listener.close()
