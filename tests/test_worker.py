"""A worker's ends of a task that no engine call decides: a fault of its own (a bug, or a file store
that fails before the work starts) ends the task as failed and tells it as any failure is, so a
socket following the task hears its end."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from fluxhost.events import LocalEventBus
from fluxhost.orders import Training
from fluxhost.runtime.leases import Leases
from fluxhost.runtime.worker import ServedModel, Worker
from fluxhost.settings import ModelSettings
from fluxhost.storage.local import LocalFileStore
from fluxhost.store.schema import tasks as task_rows
from fluxhost.store.tasks import TaskStore
from fluxhost.store.work import WorkStore
from tests.helpers import FOX_ORDER, SLUG, database_with_project

TRAINER = "me/trainer"


class Trainer:
    description = "a trainer never reached"
    kinds = frozenset({"train"})


class FailingFiles:
    """A file store that cannot be reached."""

    def read(self, folder: str, name: str) -> bytes:
        raise OSError("the object store could not be reached (EndpointConnectionError)")


@pytest.fixture
def stores(tmp_path) -> tuple[TaskStore, WorkStore, int]:
    db, project_id = database_with_project(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return TaskStore(db), WorkStore(db), project_id


def heard_by(events: LocalEventBus) -> list[str]:
    heard: list[str] = []
    events.subscribe(lambda event: heard.append(event.type.value))
    return heard


def test_a_training_whose_checkpoints_cannot_be_read_fails_with_the_reason_and_says_so(stores):
    tasks, work, project_id = stores
    training = Training(steps=10, learning_rate=1e-4, rank=4, batch_size=1, resolution=256, save_every=0,
                        keep_checkpoints=1, sample_every=0, checkpoints_folder="0" * 64, project_id=project_id,
                        key_id=1)
    task = tasks.create(project_id, TRAINER, {}, FOX_ORDER.model_copy(update={"training": training}))
    events = LocalEventBus()
    heard = heard_by(events)
    worker = Worker("host-1-abcdef", work, {TRAINER: ServedModel(TRAINER, ModelSettings(kind="train"), Trainer())},
                    FailingFiles(), events, lease_seconds=120)
    worker.run(worker.claim())
    record = tasks.get(task.id)
    assert (record.status, record.outcome) == ("task_postprocess_end", "failed")
    assert "the object store could not be reached" in record.debug_error
    assert heard[-2:] == ["task_error_full", "task_postprocess_end"]


def test_a_fault_of_the_worker_s_own_fails_its_tasks_and_tells_their_end(stores, monkeypatch):
    tasks, work, project_id = stores
    task = tasks.create(project_id, SLUG, {}, FOX_ORDER)
    events = LocalEventBus()
    heard = heard_by(events)
    worker = Worker("host-1-abcdef", work, {SLUG: ServedModel(SLUG, ModelSettings(), None, "not loaded")}, None,
                    events, lease_seconds=120)

    def a_bug(*_args) -> None:
        raise KeyError("a fault of the worker's own")

    monkeypatch.setattr(worker, "_run_batch", a_bug)
    assert worker.run(worker.claim()) == []
    record = tasks.get(task.id)
    assert (record.status, record.debug_error) == ("task_postprocess_end", "Internal error: KeyError")
    assert heard == ["task_error_full", "task_postprocess_end"]


class WaitingEngine:
    """An engine that waits, before its first step, until told to go on (for the device, say)."""

    description = "an engine waiting for its device"
    kinds = frozenset({"generate"})

    def __init__(self):
        self.waiting, self.go_on = threading.Event(), threading.Event()

    def generate_batch(self, requests, on_start, on_step):
        self.waiting.set()
        assert self.go_on.wait(30)
        on_start()
        on_step(0, 1, 1, None)
        return [[Image.new("RGB", (8, 8))] for _request in requests]


def test_a_run_that_outlasts_its_lease_before_its_first_step_is_not_taken_up_by_another_worker(stores, tmp_path):
    """Leases were renewed only at steps: a task that waited longer than its lease for its device
    was taken up again by another worker's recovery, and ran twice."""
    tasks, work, project_id = stores
    task = tasks.create(project_id, SLUG, {}, FOX_ORDER)
    engine = WaitingEngine()
    worker = Worker("host-1-abcdef", work, {SLUG: ServedModel(SLUG, ModelSettings(), engine)},
                    LocalFileStore(tmp_path / "files", "http://127.0.0.1:1/files"),
                    LocalEventBus(), lease_seconds=1.0)
    running = threading.Thread(target=lambda: worker.run(worker.claim()))
    running.start()
    try:
        assert engine.waiting.wait(30)
        time.sleep(2.0)  # two leases
        assert work.recover(max_attempts=3).requeued == []  # another host's recovery: the lease is still held
    finally:
        engine.go_on.set()
        running.join(30)
    record = tasks.get(task.id)
    assert (record.status, record.outcome, record.attempts) == ("task_postprocess_end", "completed", 1)


def test_a_lease_found_no_longer_held_marks_its_task_lost_until_the_task_is_let_go(tmp_path):
    db, project_id = database_with_project(f"sqlite:///{tmp_path / 'db.sqlite'}")
    tasks, work = TaskStore(db), WorkStore(db)

    def lease_end(task_id: int) -> float:
        with db.read() as connection:
            return connection.scalar(select(task_rows.c.lease_expires_at).where(task_rows.c.id == task_id))

    task = tasks.create(project_id, SLUG, {}, FOX_ORDER)
    claimed = work.claim_next("worker-a", [SLUG], lease_seconds=60)
    leases = Leases(work, "worker-a", lease_seconds=600)
    with leases.holding([claimed.id]):
        leases.renew()
        assert not leases.lost(task.id)
        assert lease_end(task.id) > time.time() + 500  # renewed for a whole lease
        work.fail(task.id, "killed elsewhere")  # no longer ours: ended by another process
        leases.renew()
        assert leases.lost(task.id)
    assert not leases.lost(task.id)  # the same id claimed again later is not lost
    leases.stop()


def test_a_renewal_the_database_refuses_is_logged_and_tried_at_the_next_beat(stores, caplog):
    tasks, work, project_id = stores
    task = tasks.create(project_id, SLUG, {}, FOX_ORDER)
    claimed = work.claim_next("worker-a", [SLUG], lease_seconds=60)

    class LockedStore:
        def renew_lease(self, *_args):
            raise OperationalError("UPDATE tasks", {}, Exception("database is locked"))

    leases = Leases(LockedStore(), "worker-a", lease_seconds=600)
    with leases.holding([claimed.id]):
        leases.renew()
        assert not leases.lost(task.id)
    assert "leases could not be renewed; trying again at the next beat: OperationalError" in caplog.text
    leases.stop()


def test_the_renewing_thread_outlives_a_beat_that_failed_unexpectedly(stores):
    """PostgreSQL answering an UPDATE as read-only (a failover) is no DATABASE_FAULT: the thread
    ended, and no task the worker claimed afterwards was renewed again."""
    tasks, work, project_id = stores
    task = tasks.create(project_id, SLUG, {}, FOX_ORDER)
    claimed = work.claim_next("worker-a", [SLUG], lease_seconds=60)
    renew_lease, beats = work.renew_lease, []

    def read_only_once(*args):
        beats.append(1)
        if len(beats) == 1:
            raise RuntimeError("cannot execute UPDATE in a read-only transaction")
        return renew_lease(*args)

    work.renew_lease = read_only_once
    leases = Leases(work, "worker-a", lease_seconds=0.2)
    with leases.holding([claimed.id]):
        deadline = time.monotonic() + 10
        while len(beats) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    leases.stop()
    assert len(beats) >= 3 and not leases.lost(task.id)
