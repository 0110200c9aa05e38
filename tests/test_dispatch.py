"""The Celery dispatcher's side of the broker, without one: what it sends, and what it keeps when
the broker will not take a message."""

import time

from kombu.exceptions import OperationalError

from fluxhost.runtime.dispatch import celery as celery_dispatch
from fluxhost.runtime.dispatch.celery import RUN_TASK, SEND_TIMEOUTS, CeleryDispatcher, queue_name


def test_a_message_carries_only_the_task_id_to_its_models_queue(monkeypatch):
    dispatcher = CeleryDispatcher("redis://127.0.0.1:1/0", visibility_seconds=60)
    sent = []
    monkeypatch.setattr(dispatcher.app, "send_task", lambda name, args, queue: sent.append((name, args, queue)))
    dispatcher.notify(7, "black-forest-labs/flux-pro-1.1")
    assert sent == [(RUN_TASK, [7], "fluxhost.black-forest-labs/flux-pro-1.1")]
    assert queue_name("a/b") != queue_name("a/c")
    conf = dispatcher.app.conf
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options == {"visibility_timeout": 60, **SEND_TIMEOUTS}  # a hung broker: bounded


def test_a_message_the_broker_refused_is_sent_again_once_it_takes_them(monkeypatch):
    monkeypatch.setattr(celery_dispatch, "RESEND_SECONDS", 0.05)
    dispatcher = CeleryDispatcher("redis://127.0.0.1:1/0", visibility_seconds=60)
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


def test_while_the_broker_refuses_later_runs_do_not_wait_on_it(monkeypatch):
    """A send runs inside a Run's request: once the broker refused one, the next messages wait
    with it for the resend instead of each waiting on the broker, and go in their order."""
    monkeypatch.setattr(celery_dispatch, "RESEND_SECONDS", 0.05)
    dispatcher = CeleryDispatcher("redis://127.0.0.1:1/0", visibility_seconds=60)
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
