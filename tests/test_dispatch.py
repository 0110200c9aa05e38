"""The Celery dispatcher's side of the broker, without one: what it sends, and what it keeps when
the broker will not take a message."""

import time

from kombu.exceptions import OperationalError

from fluxhost.runtime.dispatch import celery as celery_dispatch
from fluxhost.runtime.dispatch.celery import RUN_TASK, CeleryDispatcher, queue_name


def test_a_message_carries_only_the_task_id_to_its_models_queue(monkeypatch):
    dispatcher = CeleryDispatcher("redis://127.0.0.1:1/0", visibility_seconds=60)
    sent = []
    monkeypatch.setattr(dispatcher.app, "send_task", lambda name, args, queue: sent.append((name, args, queue)))
    dispatcher.notify(7, "black-forest-labs/flux-pro-1.1")
    assert sent == [(RUN_TASK, [7], "fluxhost.black-forest-labs/flux-pro-1.1")]
    assert queue_name("a/b") != queue_name("a/c")
    conf = dispatcher.app.conf
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options == {"visibility_timeout": 60}


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
