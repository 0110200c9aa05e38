"""A worker's ends of a task that no engine call decides: a fault of its own (a bug, or a file store
that fails before the work starts) ends the task as failed and tells it as any failure is, so a
socket following the task hears its end."""

from __future__ import annotations

import pytest

from fluxhost.events import LocalEventBus
from fluxhost.orders import Training
from fluxhost.runtime.worker import ServedModel, Worker
from fluxhost.settings import ModelSettings
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
