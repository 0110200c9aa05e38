"""Task events are typed records that cross a process boundary unchanged."""

import json

from hypothesis import given
from hypothesis import strategies as st

from fluxhost.events import Progress, TaskEvent
from fluxhost.protocol_json import event_frame_text
from fluxhost.statuses import Status

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
