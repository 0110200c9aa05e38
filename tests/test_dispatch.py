"""The Celery dispatcher's side of the broker, without one: what it sends, what it keeps when the
broker will not take a message, and what it records of the messages taken."""

import time
from collections.abc import Iterator

import pytest
import redis
from celery.exceptions import Reject
from kombu.exceptions import OperationalError
from sqlalchemy.exc import OperationalError as DatabaseError

from fluxhost.runtime.dispatch import celery as celery_dispatch
from fluxhost.runtime.dispatch.celery import RUN_TASK, SEND_TIMEOUTS, CeleryDispatcher, queue_name, run_task
from fluxhost.store.tasks import TaskStore
from fluxhost.store.work import WorkStore
from tests.helpers import FOX_ORDER, SLUG, database_with_project
from tests.services import redis_binary, throwaway_redis

BROKER = "redis://127.0.0.1:1/0"  # never reached: each test replaces the sending


@pytest.fixture
def stores(tmp_path, database_url) -> Iterator[tuple[TaskStore, WorkStore, int]]:
    db, project_id = database_with_project(database_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield TaskStore(db), WorkStore(db), project_id
    db.dispose()


@pytest.fixture
def work(stores) -> WorkStore:
    return stores[1]


def test_a_message_carries_only_the_task_id_to_its_models_queue(monkeypatch, work):
    dispatcher = CeleryDispatcher(BROKER, visibility_seconds=60, work=work)
    sent = []
    monkeypatch.setattr(dispatcher.app, "send_task", lambda name, args, queue: sent.append((name, args, queue)))
    dispatcher.notify(7, "black-forest-labs/flux-pro-1.1")
    assert sent == [(RUN_TASK, [7], "fluxhost.black-forest-labs/flux-pro-1.1")]
    assert queue_name("a/b") != queue_name("a/c")
    conf = dispatcher.app.conf
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options == {"visibility_timeout": 60, **SEND_TIMEOUTS}  # a hung broker: bounded


def test_a_message_the_broker_refused_is_sent_again_once_it_takes_them(monkeypatch, work):
    monkeypatch.setattr(celery_dispatch, "BEAT_SECONDS", 0.05)
    dispatcher = CeleryDispatcher(BROKER, visibility_seconds=60, work=work)
    broker_up = False
    sent = []

    def send_task(name, args, queue):
        if not broker_up:
            raise OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        sent.append(args[0])

    monkeypatch.setattr(dispatcher.app, "send_task", send_task)
    dispatcher.start()
    try:
        dispatcher.notify(1, "a/b")
        dispatcher.notify(2, "a/b")
        time.sleep(0.2)
        assert sent == []
        broker_up = True
        deadline = time.monotonic() + 5
        while sorted(sent) != [1, 2]:
            assert time.monotonic() < deadline, sent
            time.sleep(0.02)
        time.sleep(0.2)
        assert sorted(sent) == [1, 2]  # each once
    finally:
        dispatcher.stop()


def test_while_the_broker_refuses_later_runs_do_not_wait_on_it(monkeypatch, work):
    """A send runs inside a Run's request: once the broker refused one, the next messages wait
    with it for the resend instead of each waiting on the broker, and go in their order."""
    monkeypatch.setattr(celery_dispatch, "BEAT_SECONDS", 0.05)
    dispatcher = CeleryDispatcher(BROKER, visibility_seconds=60, work=work)
    broker_up = False
    tries, sent = [], []

    def send_task(name, args, queue):
        tries.append(args[0])
        if not broker_up:
            time.sleep(0.3)  # a broker slow to refuse
            raise OperationalError("timed out")
        sent.append(args[0])

    monkeypatch.setattr(dispatcher.app, "send_task", send_task)
    dispatcher.notify(1, "a/b")
    began = time.monotonic()
    for task_id in (2, 3):
        dispatcher.notify(task_id, "a/b")
    assert time.monotonic() - began < 0.1 and tries == [1]
    dispatcher.start()
    try:
        broker_up = True
        deadline = time.monotonic() + 5
        while sent != [1, 2, 3]:
            assert time.monotonic() < deadline, sent
            time.sleep(0.02)
        dispatcher.notify(4, "a/b")  # the broker takes messages again: sent at once
        assert sent == [1, 2, 3, 4]
    finally:
        dispatcher.stop()


def _sending(work: WorkStore, monkeypatch, grace: float) -> tuple[CeleryDispatcher, list[int]]:
    """A dispatcher beating every 50 ms, sweeping for tasks ``grace`` seconds old, whose broker takes
    every message; and the task ids of the messages it sends."""
    monkeypatch.setattr(celery_dispatch, "BEAT_SECONDS", 0.05)
    monkeypatch.setattr(celery_dispatch, "UNSENT_GRACE_SECONDS", grace)
    dispatcher = CeleryDispatcher(BROKER, visibility_seconds=60, work=work)
    sent: list[int] = []
    monkeypatch.setattr(dispatcher.app, "send_task", lambda name, args, queue: sent.append(args[0]))
    return dispatcher, sent


def _until(condition, what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_the_messages_the_broker_took_are_recorded_and_never_sent_again(monkeypatch, stores):
    tasks, work, project_id = stores
    dispatcher, sent = _sending(work, monkeypatch, grace=0.0)  # every unrecorded queued task is fair game
    queued = [tasks.create(project_id, SLUG, {}, FOX_ORDER).id for _ in range(2)]
    for task_id in queued:
        dispatcher.notify(task_id, SLUG)
    dispatcher.start()
    try:
        _until(lambda: work.unsent(time.time() + 60) == [], "the messages taken were never recorded")
        time.sleep(0.3)  # several beats, each sweeping
        assert sent == queued
    finally:
        dispatcher.stop()


def test_a_queued_task_whose_message_was_never_sent_is_sent_once_past_the_grace(monkeypatch, stores):
    """Its API process committed the Run and died before the broker took the message."""
    tasks, work, project_id = stores
    stranded = tasks.create(project_id, SLUG, {}, FOX_ORDER).id
    running = tasks.create(project_id, SLUG, {}, FOX_ORDER).id
    assert work.claim_next("worker-1", [SLUG], lease_seconds=60).id == stranded  # run, and queued again:
    assert work.release("worker-1") == [(stranded, SLUG)]  # its message, if any, was the first one's
    assert work.claim_queued(running, "worker-2", lease_seconds=60)  # not queued: nothing to send
    dispatcher, sent = _sending(work, monkeypatch, grace=1.0)
    dispatcher.start()
    try:
        time.sleep(0.5)
        assert sent == []  # its own API may still be sending it
        _until(lambda: sent == [stranded], "the stranded task was never sent")
        time.sleep(0.3)
        assert sent == [stranded]
    finally:
        dispatcher.stop()


def test_a_process_stopping_while_the_broker_refuses_leaves_its_messages_to_the_others(monkeypatch, stores):
    tasks, work, project_id = stores
    refusing, _ = _sending(work, monkeypatch, grace=0.0)

    def refuse(name, args, queue):
        raise OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(refusing.app, "send_task", refuse)
    kept = tasks.create(project_id, SLUG, {}, FOX_ORDER).id
    refusing.start()
    refusing.notify(kept, SLUG)
    time.sleep(0.2)  # its beats sweep too: they leave the kept message to its resend
    refusing.stop()
    other, sent = _sending(work, monkeypatch, grace=0.0)
    other.start()
    try:
        _until(lambda: sent == [kept], "the message kept by a stopped process was never sent")
    finally:
        other.stop()


def test_a_message_whose_claim_the_database_failed_goes_back_to_its_queue(work):
    """Acknowledged, the message would be gone while its task stays queued and recorded as sent."""

    class LockedOut:
        def claim(self, task_id: int):
            raise DatabaseError("UPDATE tasks", {}, Exception("canceling statement due to lock timeout"))

    with pytest.raises(Reject) as rejected:
        run_task(CeleryDispatcher(BROKER, visibility_seconds=60, work=work), LockedOut(), 7)
    assert rejected.value.requeue


def test_a_message_recorded_after_its_task_was_queued_again_does_not_count_for_the_new_queueing(monkeypatch, stores):
    """The message was for the run before: the task, handed back since, needs one of its own."""
    tasks, work, project_id = stores
    dispatcher, sent = _sending(work, monkeypatch, grace=0.0)
    task_id = tasks.create(project_id, SLUG, {}, FOX_ORDER).id
    dispatcher.notify(task_id, SLUG)  # sent; recorded at the next beat
    time.sleep(0.01)
    assert work.claim_queued(task_id, "worker-1", lease_seconds=60)
    assert work.release("worker-1") == [(task_id, SLUG)]  # its worker hands it back before that beat
    dispatcher.stop()  # records what was sent
    assert sent == [task_id] and work.unsent(time.time() + 60) == [(task_id, SLUG)]


@pytest.mark.skipif(redis_binary() is None, reason="needs redis-server (Debian's redis-server package)")
def test_the_messages_a_restarted_broker_lost_are_sent_again(stores, monkeypatch):
    """Redis without persistence comes back from a crash empty: a queued task whose message it
    held, recorded as sent, would wait for ever."""
    tasks, work, project_id = stores
    monkeypatch.setattr(celery_dispatch, "UNSENT_GRACE_SECONDS", 0.0)
    with throwaway_redis() as broker:
        dispatcher = CeleryDispatcher(broker.url, visibility_seconds=60, work=work)
        queue = redis.Redis.from_url(broker.url)
        try:
            time.sleep(1.1)  # sent in the broker's first second, a message is sent again, lest one be lost
            task_id = tasks.create(project_id, SLUG, {}, FOX_ORDER).id
            dispatcher.notify(task_id, SLUG)
            dispatcher.beat()  # the message recorded as sent
            assert queue.llen(queue_name(SLUG)) == 1 and work.unsent(time.time() + 60) == []
            dispatcher.beat()
            assert queue.llen(queue_name(SLUG)) == 1  # the same broker: nothing sent twice
            broker.kill()
            time.sleep(1.1)  # a start is told apart from the one before by whole seconds of uptime
            broker.start()
            assert queue.llen(queue_name(SLUG)) == 0  # lost
            _until(lambda: (dispatcher.beat(), queue.llen(queue_name(SLUG)))[1] == 1,
                   "the lost message was never sent again")
            dispatcher.beat()
            assert queue.llen(queue_name(SLUG)) == 1 and work.unsent(time.time() + 60) == []
        finally:
            dispatcher.stop()
            queue.close()
