"""The parent wakes its worker process only when a worker there waits: a busy child finds what was
queued before it waits, or says it waits and is woken at once (never left to its next poll)."""

from fluxhost.events import LocalEventBus
from fluxhost.runtime.dispatch.child import ChildProcessDispatcher, Wake
from fluxhost.settings import Settings


class RecordingPipe:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, message: object) -> None:
        self.sent.append(message)


def dispatcher_on(pipe: RecordingPipe, tmp_path) -> ChildProcessDispatcher:
    """A dispatcher whose child is just started (busy claiming what is queued), talking into ``pipe``."""
    dispatcher = ChildProcessDispatcher(Settings(data_dir=tmp_path), "worker", {}, LocalEventBus(),
                                        on_lost=lambda: None)
    dispatcher._pipe = pipe
    return dispatcher


def test_runs_queued_while_the_child_is_busy_send_nothing(tmp_path):
    pipe = RecordingPipe()
    dispatcher = dispatcher_on(pipe, tmp_path)
    for task_id in range(1, 50):
        dispatcher.notify(task_id, "m")
    assert pipe.sent == []


def test_a_child_that_says_it_waits_after_runs_were_queued_is_woken_at_once(tmp_path):
    """It may have looked at the queue just before those Runs committed."""
    pipe = RecordingPipe()
    dispatcher = dispatcher_on(pipe, tmp_path)
    dispatcher.notify(1, "m")
    dispatcher.notify(2, "m")
    dispatcher._heard_idle()
    assert pipe.sent == [Wake()]


def test_a_waiting_child_is_woken_once_by_the_next_run_and_is_busy_after(tmp_path):
    pipe = RecordingPipe()
    dispatcher = dispatcher_on(pipe, tmp_path)
    dispatcher._heard_idle()
    dispatcher._heard_idle()  # every waiting worker thread says so, and says it again at each poll
    assert pipe.sent == []
    dispatcher.notify(1, "m")
    dispatcher.notify(2, "m")
    assert pipe.sent == [Wake()]
    dispatcher._heard_idle()  # it ran out of work before task 2 committed: woken again
    assert pipe.sent == [Wake(), Wake()]
    dispatcher._heard_idle()
    assert pipe.sent == [Wake(), Wake()]
