"""The parent wakes its worker process only when a worker there waits: a busy child finds what was
queued before it waits, or says it waits and is woken at once (never left to its next poll). Each
lane on its own: a drawing queued never wakes the training lane, nor a training the drawing one."""

import threading
import time

from fluxhost.events import LocalEventBus
from fluxhost.runtime.dispatch import threads
from fluxhost.runtime.dispatch.child import ChildProcessDispatcher, Wake
from fluxhost.runtime.dispatch.threads import ThreadDispatcher
from fluxhost.runtime.lanes import lane_of, lanes
from fluxhost.settings import ModelSettings, Settings

DRAWING, TRAINING = "m/draw", "m/train"
MODELS = {DRAWING: ModelSettings(), TRAINING: ModelSettings(kind="train")}


class RecordingPipe:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, message: object) -> None:
        self.sent.append(message)


def dispatcher_on(pipe: RecordingPipe, tmp_path, models=None, **settings) -> ChildProcessDispatcher:
    """A dispatcher whose child is just started (busy claiming what is queued), talking into ``pipe``."""
    dispatcher = ChildProcessDispatcher(Settings(data_dir=tmp_path, **settings), "worker",
                                        {DRAWING: ModelSettings()} if models is None else models, LocalEventBus(),
                                        on_lost=lambda: None)
    dispatcher._pipe = pipe
    return dispatcher


def test_runs_queued_while_the_child_is_busy_send_nothing(tmp_path):
    pipe = RecordingPipe()
    dispatcher = dispatcher_on(pipe, tmp_path)
    for task_id in range(1, 50):
        dispatcher.notify(task_id, DRAWING)
    assert pipe.sent == []


def test_a_child_that_says_it_waits_after_runs_were_queued_is_woken_at_once(tmp_path):
    """It may have looked at the queue just before those Runs committed."""
    pipe = RecordingPipe()
    dispatcher = dispatcher_on(pipe, tmp_path)
    dispatcher.notify(1, DRAWING)
    dispatcher.notify(2, DRAWING)
    dispatcher._heard_idle(None)
    assert pipe.sent == [Wake(None)]


def test_a_waiting_child_is_woken_once_by_the_next_run_and_is_busy_after(tmp_path):
    pipe = RecordingPipe()
    dispatcher = dispatcher_on(pipe, tmp_path)
    dispatcher._heard_idle(None)
    dispatcher._heard_idle(None)  # every waiting worker thread says so, and says it again at each poll
    assert pipe.sent == []
    dispatcher.notify(1, DRAWING)
    dispatcher.notify(2, DRAWING)
    assert pipe.sent == [Wake(None)]
    dispatcher._heard_idle(None)  # it ran out of work before task 2 committed: woken again
    assert pipe.sent == [Wake(None), Wake(None)]
    dispatcher._heard_idle(None)
    assert pipe.sent == [Wake(None), Wake(None)]


def test_the_lanes_are_woken_each_for_its_own_tasks(tmp_path):
    pipe = RecordingPipe()
    dispatcher = dispatcher_on(pipe, tmp_path, MODELS)
    dispatcher._heard_idle(True)  # the trainer waits; the drawing lane is busy
    for task_id in range(1, 20):
        dispatcher.notify(task_id, DRAWING)
    assert pipe.sent == []  # the drawing lane finds them before it waits
    dispatcher._heard_idle(False)
    assert pipe.sent == [Wake(False)]  # owed to the drawing lane, not to the trainer
    dispatcher.notify(20, TRAINING)
    dispatcher.notify(21, TRAINING)
    assert pipe.sent == [Wake(False), Wake(True)]


def test_a_child_that_runs_no_training_has_one_lane_and_ignores_what_it_does_not_run(tmp_path):
    pipe = RecordingPipe()
    dispatcher = dispatcher_on(pipe, tmp_path, MODELS, worker_kinds="text-to-image")
    dispatcher._heard_idle(None)
    dispatcher.notify(1, TRAINING)  # another process's workers train
    dispatcher.notify(2, "m/unknown")
    assert pipe.sent == []
    dispatcher.notify(3, DRAWING)
    assert pipe.sent == [Wake(None)]


def test_lanes_split_only_where_a_model_trains():
    assert lanes(["text-to-image", "edit"]) == (None,)
    assert lanes(["text-to-image", "train"]) == (False, True)
    assert lane_of("edit", ["edit"]) is None
    assert lane_of("edit", ["edit", "train"]) is False
    assert lane_of("train", ["edit", "train"]) is True


class LaneRecorder:
    """A worker that finds nothing to claim, recording in which lane each claim looked."""

    models = {DRAWING: None, TRAINING: None}
    lanes = (False, True)

    def __init__(self) -> None:
        self.claims: list[object] = []
        self.claimed = threading.Condition()

    def lane(self, slug: str) -> bool:
        return slug == TRAINING

    def claim(self, training=None) -> list:
        with self.claimed:
            self.claims.append(training)
            self.claimed.notify_all()
        return []


def test_worker_threads_wake_only_in_the_lane_of_the_queued_task(monkeypatch):
    monkeypatch.setattr(threads, "IDLE_POLL_SECONDS", 60)  # no polling within the test: only wakes
    worker = LaneRecorder()
    idle: list[object] = []
    dispatcher = ThreadDispatcher(lambda: [worker], concurrency=1, on_idle=idle.append)

    def claims_reach(count: int) -> None:
        with worker.claimed:
            assert worker.claimed.wait_for(lambda: len(worker.claims) >= count, timeout=10), worker.claims

    dispatcher.start()
    try:
        claims_reach(2)  # each lane looks once at the start, then waits
        assert sorted(worker.claims) == [False, True]
        dispatcher.notify(1, DRAWING)
        claims_reach(3)
        dispatcher.notify(2, TRAINING)
        claims_reach(4)
        time.sleep(0.2)
        assert worker.claims[2:] == [False, True]
        assert sorted(idle) == [False, False, True, True]
    finally:
        dispatcher.stop(grace_seconds=5)
