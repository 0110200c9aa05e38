"""Signed callbacks, their retries, their durability and the address guard."""

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import threading
import time
from collections import Counter

import httpx
import pytest
from typer.testing import CliRunner

from fluxhost.callbacks.poster import Outcome, WebhookPoster
from fluxhost.callbacks.sender import CallbackSender
from fluxhost.cli import app
from fluxhost.events import LocalEventBus, TaskEvent
from fluxhost.signing import KeyMode, sign_webhook
from fluxhost.statuses import TERMINAL, Status
from fluxhost.store.deliveries import Attempt, Deliveries, owe_callback
from fluxhost.store.tasks import TaskStore
from fluxhost.urlguard import Allowlist, PinnedUrl, UrlRefused, check_public_url
from tests.helpers import (
    FOX_ORDER,
    SLUG,
    DrippingReceiver,
    LiveServer,
    ProtocolClient,
    Receiver,
    database_with_project,
    slow_to_resolve,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def verify(request: dict, webhook_secret: str) -> dict:
    """What a receiver does: recompute the Standard Webhooks signature, then trust the body."""
    headers = {k.lower(): v for k, v in request["headers"].items()}
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + request["body"]
    key = base64.b64decode(webhook_secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in headers["webhook-signature"].split()
    assert abs(time.time() - int(headers["webhook-timestamp"])) < 60
    return json.loads(request["body"])


def wait_delivery(client: ProtocolClient, taskid: str, status: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (task := client.detail(taskid))["callbackstatus"] != status:
        assert time.monotonic() < deadline, task["callbackstatus"]
        time.sleep(0.05)
    return task


@pytest.fixture
def callback_server(make_settings):
    with LiveServer(make_settings(callback_allowlist="127.0.0.1", callback_backoff_seconds=0.3)) as live:
        yield live


@pytest.fixture
def callback_client(callback_server):
    return ProtocolClient(callback_server.base_url, callback_server.service.keys.create(KeyMode.SIGNATURE))


def test_one_signed_delivery_of_the_detail_answer(callback_client):
    with Receiver([200]) as receiver:
        run = callback_client.run(callbackUrl=receiver.url)
        task = wait_delivery(callback_client, run["taskid"], "delivered")
        time.sleep(0.5)  # nothing more arrives
        [request] = receiver.requests
    body = verify(request, callback_client.key.webhook_secret)
    assert body["result"] is True and body["total"] == "1"
    [sent] = body["tasklist"]
    assert sent["status"] == "task_postprocess_end" and sent["pexit"] == "0"
    volatile = ("callbackstatus", "callbackattempts")
    assert {k: v for k, v in sent.items() if k not in volatile} == {k: v for k, v in task.items() if k not in volatile}
    [attempt] = task["callbackattempts"]
    assert attempt["attempt"] == "1" and attempt["statuscode"] == "200"


def test_retries_with_growing_delays_until_it_is_taken(callback_client):
    with Receiver([503, 503, 503, 200]) as receiver:
        run = callback_client.run(callbackUrl=receiver.url)
        task = wait_delivery(callback_client, run["taskid"], "delivered")
        requests = receiver.requests
    assert len(requests) == 4
    ids = {r["headers"]["webhook-id"] for r in requests}
    assert len(ids) == 1  # one message, retried: receivers can deduplicate on it
    gaps = [later["time"] - earlier["time"] for earlier, later in zip(requests, requests[1:], strict=False)]
    assert gaps[0] < gaps[1] < gaps[2]
    assert [a["statuscode"] for a in task["callbackattempts"]] == ["503", "503", "503", "200"]
    for request in requests:
        verify(request, callback_client.key.webhook_secret)


def test_other_client_errors_are_not_retried(callback_client):
    with Receiver([404, 200]) as receiver:
        run = callback_client.run(callbackUrl=receiver.url)
        task = wait_delivery(callback_client, run["taskid"], "failed")
        time.sleep(1.0)
        assert len(receiver.requests) == 1
    assert task["callbackattempts"][0]["statuscode"] == "404"


def test_a_cancelled_task_calls_back_too(make_settings):
    with Receiver() as receiver, LiveServer(make_settings(steps=40, max_batch=1,
                                                          callback_allowlist="127.0.0.1")) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        blocker = client.run()
        queued = client.run(callbackUrl=receiver.url)
        assert client.call("Task/Cancel", {"taskid": queued["taskid"]})["result"] is True
        [request] = receiver.wait_for(1)
        client.call("Task/Kill", {"taskid": blocker["taskid"]})
    assert verify(request, client.key.webhook_secret)["tasklist"][0]["status"] == "task_cancel"


def test_a_delivery_survives_a_restart(make_settings):
    settings = make_settings(callback_allowlist="127.0.0.1", callback_backoff_seconds=2.0)
    with Receiver([503, 200]) as receiver:
        with LiveServer(settings) as first:
            client = ProtocolClient(first.base_url, first.service.keys.create(KeyMode.SIGNATURE))
            run = client.run(callbackUrl=receiver.url)
            receiver.wait_for(1)
        with LiveServer(settings) as second:
            client.base_url = second.base_url
            task = wait_delivery(client, run["taskid"], "delivered")
        assert len(receiver.requests) == 2
    assert [a["statuscode"] for a in task["callbackattempts"]] == ["503", "200"]

    listed = CliRunner(env={"FLUXHOST_DATA_DIR": str(settings.data_dir),
                            "FLUXHOST_DATABASE_URL": settings.database_url or ""}).invoke(
        app, ["callbacks", "list", "--json", "--task", run["taskid"]]
    )
    [delivery] = json.loads(listed.output)
    assert delivery["status"] == "delivered" and [a["status_code"] for a in delivery["history"]] == [503, 200]


def test_slow_receivers_hold_back_only_their_own_callbacks(make_settings):
    """One receiver drips its answer's body, one never finishes its headers, one answers at once:
    the prompt one is called back at once, every callback is one successful POST, and the stalled
    ones are tried exactly three times, each attempt cut at the deadline."""
    settings = make_settings(engine="bench", callback_allowlist="127.0.0.1", callback_timeout_seconds=2.0,
                             callback_max_attempts=3, callback_backoff_seconds=0.2)  # 2 s: room for a busy CPU
    with DrippingReceiver("body") as dripping, DrippingReceiver("headers") as stalling, Receiver() as prompt, \
            LiveServer(settings) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        dripped = [client.run(callbackUrl=dripping.url)["taskid"] for _ in range(4)]
        stalled = [client.run(callbackUrl=stalling.url)["taskid"] for _ in range(4)]
        answered = client.run(callbackUrl=prompt.url)["taskid"]
        client.wait(answered)
        ended = time.monotonic()
        [request] = prompt.wait_for(1)
        assert request["time"] - ended < settings.callback_timeout_seconds
        for taskid in dripped:
            assert [a["statuscode"] for a in wait_delivery(client, taskid, "delivered")["callbackattempts"]] == ["200"]
        for taskid in stalled:
            attempts = wait_delivery(client, taskid, "failed")["callbackattempts"]
            assert [a["attempt"] for a in attempts] == ["1", "2", "3"]
            assert all(a["error"].startswith("no answer within 2 s") for a in attempts)
            assert all(float(a["seconds"]) < settings.callback_timeout_seconds + 0.5 for a in attempts)
        time.sleep(0.5)  # nothing more arrives
    assert list(Counter(r["headers"]["webhook-id"] for r in dripping.requests).values()) == [1, 1, 1, 1]
    assert list(Counter(r["headers"]["webhook-id"] for r in stalling.requests).values()) == [3, 3, 3, 3]
    assert len(prompt.requests) == 1


def test_an_attempt_whose_claim_was_taken_over_records_nothing(database_url, tmp_path):
    """A post that outlives its claim lets a second sender claim the delivery: what the first one
    learns is not recorded, attempts are numbered without repeats, and a delivered row stays so."""
    db, project_id = database_with_project(database_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
    task = TaskStore(db).create(project_id, SLUG, {}, FOX_ORDER, callback_url="http://hooks.example.com/x")
    with db.write() as connection:
        owe_callback(connection, task.id, 1000.0)
    deliveries = Deliveries(db)
    [(delivery_id, _)] = deliveries.due(1000.0)
    first = deliveries.claim(delivery_id, 1000.0, hold_until=1010.0)
    assert deliveries.claim(delivery_id, 1005.0, hold_until=1015.0) is None  # held
    second = deliveries.claim(delivery_id, 1011.0, hold_until=1021.0)  # the first claim ran out
    assert first is not None and second is not None and second.attempts == first.attempts == 0
    assert deliveries.record(second, Attempt(1011.0, 0.1, 200, ""), "delivered", 1011.1)
    assert not deliveries.record(first, Attempt(1000.0, 12.0, None, "timed out"), "pending", 1030.0)
    assert deliveries.due(2000.0) == []
    [listed] = deliveries.list(task.id)
    assert listed["status"] == "delivered" and [a["attempt"] for a in listed["history"]] == [1]
    assert [a["status_code"] for a in listed["history"]] == [200]


class AnsweringPoster:
    """Posts nothing: every callback is answered 200 at once."""

    deadline_seconds = 1.0
    posted: list[str]

    def __init__(self):
        self.posted = []

    def post(self, url: str, message_id: str, secret: str, body: bytes) -> Outcome:
        self.posted.append(message_id)
        return Outcome(200, "", retry=False)

    def close(self) -> None:
        pass


def test_an_answer_the_database_refused_to_record_once_is_recorded_and_its_receiver_forgotten(tmp_path,
                                                                                              monkeypatch):
    """One fault while recording a 200 lost it: the same webhook-id was POSTed again once the claim
    ran out. And every origin ever posted to was kept, each pass summing them all."""
    from sqlalchemy.exc import OperationalError

    from fluxhost.callbacks import sender as sending

    monkeypatch.setattr(sending, "RECORD_RETRY_SECONDS", (0.01, 0.01))
    db, project_id = database_with_project(f"sqlite:///{tmp_path / 'db.sqlite'}")
    task = TaskStore(db).create(project_id, SLUG, {}, FOX_ORDER, callback_url="http://hooks.example.com/x")
    with db.write() as connection:
        owe_callback(connection, task.id, 1000.0)
    deliveries, poster = Deliveries(db), AnsweringPoster()
    record, faults = deliveries.record, [OperationalError("UPDATE", {}, Exception("database is locked"))]

    def locked_once(*args):
        if faults:
            raise faults.pop()
        return record(*args)

    monkeypatch.setattr(deliveries, "record", locked_once)
    sender = CallbackSender(deliveries, TaskStore(db), LocalEventBus(), render=lambda task: {"id": str(task.id)},
                            poster=poster, max_attempts=3, backoff_seconds=30, per_origin=2)
    try:
        sender._start_due(time.time())
        deadline = time.monotonic() + 10
        while deliveries.list(task.id)[0]["status"] != "delivered" and time.monotonic() < deadline:
            time.sleep(0.01)
        [listed] = deliveries.list(task.id)
        assert listed["status"] == "delivered" and not faults and len(poster.posted) == 1
        while sender._in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not sender._in_flight  # nothing in flight: no receiver remembered
    finally:
        sender.stop()


def test_retry_delays_double_up_to_a_day_and_the_backoff_is_bounded(tmp_path):
    from pydantic import ValidationError

    from fluxhost.settings import Settings

    sender = CallbackSender(Deliveries(None), None, LocalEventBus(), render=dict, poster=AnsweringPoster(),
                            max_attempts=50, backoff_seconds=30, per_origin=2)
    assert 24 <= sender.delay_before(1) <= 36 and 48 <= sender.delay_before(2) <= 72
    assert 0.8 * 86_400 <= sender.delay_before(50) <= 1.2 * 86_400  # not 30 * 2**49 s: half a billion years
    for backoff in ("inf", "1e9"):
        with pytest.raises(ValidationError):
            Settings(data_dir=tmp_path, callback_backoff_seconds=backoff)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/hook", "http://192.168.0.7/x",
     "http://169.254.169.254/latest/meta-data", "http://[::1]/hook", "http://0.0.0.0/", "http://224.0.0.1/"],
)
def test_private_addresses_are_refused_at_run(client, url):
    answer = client.call(f"Run/{SLUG}", {"prompt": "x", "callbackUrl": url})
    assert answer["result"] is False
    assert "non-public address" in answer["errors"][0]["message"]
    assert client.call("Task/List", {})["total"] == "0"


def test_the_allowlist_admits_hosts_and_ranges():
    for allowed in ("127.0.0.1", "127.0.0.0/8", "localhost"):
        check_public_url("http://localhost:8080/hook", Allowlist.parse(f"10.0.0.0/8, {allowed}"))
    with pytest.raises(UrlRefused):
        check_public_url("http://localhost:8080/hook", Allowlist.parse("10.0.0.0/8"))
    with pytest.raises(UrlRefused, match="http or https"):
        check_public_url("http://x/" + "a" * 2100, Allowlist.parse(""))
    with pytest.raises(UrlRefused, match="cannot be resolved"):
        check_public_url("http://no-such-host.invalid/hook", Allowlist.parse(""))


def test_a_connection_goes_to_the_address_that_was_checked(monkeypatch):
    """DNS answers once: a host that resolves elsewhere a moment later (rebinding) is not asked
    again, the callback goes to the checked address, under its own name."""
    real_lookup = socket.getaddrinfo
    lookups = []

    def one_answer(host, *args, **kwargs):
        if host != "hooks.example.test":
            return real_lookup(host, *args, **kwargs)
        lookups.append(host)
        assert len(lookups) == 1, "the name was resolved again after the check"
        return real_lookup("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", one_answer)
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        poster = WebhookPoster(Allowlist.parse("hooks.example.test"), deadline_seconds=5)
        secret = SECRET
        outcome = poster.post(f"http://hooks.example.test:{port}/hook", "msg_1", secret, b"{}")
    assert outcome.delivered and lookups == ["hooks.example.test"]
    assert {name.lower(): value for name, value in receiver.requests[0]["headers"].items()}["host"] == (
        f"hooks.example.test:{port}")


def test_callbacks_share_one_set_of_certificates(monkeypatch):
    """Reading the system's certificates costs 40-75 ms: an attempt that read them again would
    add that to every callback's latency."""
    import ssl

    loads = []
    real_load = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations",
                        lambda context, *args, **kwargs: loads.append(1) or real_load(context, *args, **kwargs))
    secret = SECRET
    poster = WebhookPoster(Allowlist.parse("127.0.0.1"), deadline_seconds=5)
    with Receiver([200] * 3) as receiver:
        url = f"http://127.0.0.1:{receiver.server.server_address[1]}/hook"
        assert poster.post(url, "msg_1", secret, b"{}").delivered
        first = len(loads)
        for number in (2, 3):
            assert poster.post(url, f"msg_{number}", secret, b"{}").delivered
    assert len(loads) == first


def test_callbacks_to_one_receiver_share_a_connection_and_names_never_share_one(monkeypatch):
    """A connection made per callback cost more CPU than the rest of a task's path. One made for a
    name is not lent to another name at the same address: its TLS was checked for the first."""
    real_lookup = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: real_lookup(
        "127.0.0.1" if host.endswith(".example.test") else host, *args, **kwargs))
    secret = SECRET
    poster = WebhookPoster(Allowlist.parse("hooks.example.test,other.example.test"), deadline_seconds=5)
    try:
        with Receiver(keep_alive=True) as receiver:
            port = receiver.server.server_address[1]
            for number in range(3):
                assert poster.post(f"http://hooks.example.test:{port}/hook", f"msg_{number}", secret, b"{}").delivered
            assert poster.post(f"http://other.example.test:{port}/hook", "msg_3", secret, b"{}").delivered
            ports = [request["client_port"] for request in receiver.wait_for(4)]
    finally:
        poster.close()
    assert ports[0] == ports[1] == ports[2] != ports[3]


def test_a_pinned_url_keeps_its_name_for_the_host_header_and_tls():
    pinned = PinnedUrl("https://user:pw@hooks.example.com:8443/a/b?x=1", ipaddress.ip_address("2001:db8::7"))
    request = pinned.request()
    assert str(request["url"]) == "https://user:pw@[2001:db8::7]:8443/a/b?x=1"
    assert request["headers"] == {"host": "hooks.example.com:8443"}
    assert request["extensions"] == {"sni_hostname": "hooks.example.com"}
    assert PinnedUrl("http://hooks.example.com/x", ipaddress.ip_address("192.0.2.1")).request()["headers"] == {
        "host": "hooks.example.com"}


def test_a_pinned_url_sends_an_international_name_in_ascii_and_an_ipv6_one_in_brackets():
    international = PinnedUrl("https://bücher.example:8443/hook", ipaddress.ip_address("192.0.2.1")).request()
    assert international["headers"] == {"host": "xn--bcher-kva.example:8443"}
    assert international["extensions"] == {"sni_hostname": "xn--bcher-kva.example"}
    literal = PinnedUrl("http://[2001:db8::1]:8080/x", ipaddress.ip_address("2001:db8::1")).request()
    assert literal["headers"] == {"host": "[2001:db8::1]:8080"}
    for arguments in (international, literal):  # a request is built from them (headers are ASCII), not sent
        httpx.Request("POST", **arguments)


def test_a_url_no_request_can_be_built_for_is_refused_before_any_lookup(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: pytest.fail("the host was looked up"))
    with pytest.raises(UrlRefused, match="http or https"):
        check_public_url("https://hooks.example.com/a\x01b", Allowlist.parse(""))


@pytest.mark.parametrize(("error", "retried"), [(socket.EAI_AGAIN, True), (socket.EAI_NONAME, False)])
def test_a_lookup_failing_for_now_is_retried_and_one_failing_for_good_is_not(monkeypatch, error, retried):
    def lookup(*args, **kwargs):
        raise socket.gaierror(error, "the resolver's answer")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    outcome = WebhookPoster(Allowlist.parse(""), 1.0).post("http://hooks.example.com/x", "msg_1", SECRET, b"{}")
    assert outcome.status_code is None and outcome.retry is retried
    assert outcome.error.startswith("the callback URL host hooks.example.com cannot be resolved")


def test_a_lookup_that_does_not_answer_is_cut_at_the_deadline():
    poster = WebhookPoster(Allowlist.parse(""), deadline_seconds=0.5)
    try:
        with slow_to_resolve("hooks.example.test") as asked:  # answers when the block ends (10 s at most)
            started = time.monotonic()
            outcome = poster.post("http://hooks.example.test/x", "msg_1", SECRET, b"{}")
            took = time.monotonic() - started
    finally:
        poster.close()
    assert asked.is_set() and took < 5
    assert outcome == Outcome(None, "no answer within 0.5 s", retry=True)


class BrokenPoster:
    """A poster whose attempt raises what no attempt should."""

    deadline_seconds = 1.0

    def post(self, *args):
        raise RuntimeError("a fault of the poster's own")

    def close(self) -> None:
        pass


def test_an_attempt_that_raises_is_recorded_so_its_delivery_ends(database_url, tmp_path):
    """Not left pending, claimed again and again for ever: counted as an attempt, here the last."""
    db, project_id = database_with_project(database_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
    task = TaskStore(db).create(project_id, SLUG, {}, FOX_ORDER, callback_url="http://hooks.example.com/x")
    with db.write() as connection:
        owe_callback(connection, task.id, time.time())
    deliveries, events = Deliveries(db), LocalEventBus()
    sender = CallbackSender(deliveries, TaskStore(db), events, render=lambda record: {}, poster=BrokenPoster(),
                            max_attempts=1, backoff_seconds=1.0, per_origin=1)
    sender.start()
    try:
        deadline = time.monotonic() + 10
        while (delivery := deliveries.list(task.id)[0])["status"] == "pending":
            assert time.monotonic() < deadline, "the delivery is still pending"
            time.sleep(0.05)
    finally:
        sender.stop()
    assert delivery["status"] == "failed"
    assert [attempt["error"] for attempt in delivery["history"]] == ["the attempt failed: RuntimeError"]


def test_the_signature_follows_standard_webhooks():
    secret = SECRET
    signature = sign_webhook(secret, "msg_1", 1700000000, b'{"a":1}')
    expected = hmac.new(b"0123456789abcdef0123456789abcdef", b'msg_1.1700000000.{"a":1}', hashlib.sha256).digest()
    assert signature == "v1," + base64.b64encode(expected).decode()


def test_only_an_end_that_owes_a_delivery_wakes_the_sender(make_settings):
    """Each end wakes the sender for a pass over the deliveries table: not those of the many tasks
    without a callback URL. The worker's ends and Cancel's say whether a delivery was owed."""
    with Receiver() as receiver, LiveServer(make_settings(steps=40, max_batch=1,
                                                          callback_allowlist="127.0.0.1")) as live:
        ends: list[TaskEvent] = []
        live.service.events.subscribe(lambda event: ends.append(event) if event.type in TERMINAL else None)
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        blocker = client.run()
        queued = client.run(callbackUrl=receiver.url)
        assert client.call("Task/Cancel", {"taskid": queued["taskid"]})["result"] is True
        assert client.call("Task/Kill", {"taskid": blocker["taskid"]})["result"] is True
        done = client.run(steps="2", callbackUrl=receiver.url)
        client.wait(done["taskid"])
        receiver.wait_for(2)
    owed = {event.token: event.owes_callback for event in ends}
    assert owed == {blocker["socketaccesstoken"]: False, queued["socketaccesstoken"]: True,
                    done["socketaccesstoken"]: True}


class CountedPasses:
    """Deliveries with none ever due, counting the sender's passes over them."""

    def __init__(self) -> None:
        self.passes = threading.Semaphore(0)

    def due(self, now: float) -> list:
        self.passes.release()
        return []

    def seconds_to_next(self, now: float, longest: float) -> float:
        return longest


def test_the_sender_makes_a_pass_for_an_end_that_owes_a_delivery_and_for_no_other():
    events, deliveries = LocalEventBus(), CountedPasses()
    sender = CallbackSender(deliveries, None, events, render=lambda task: {},
                            poster=WebhookPoster(Allowlist.parse(""), 1.0), max_attempts=1, backoff_seconds=1.0,
                            per_origin=1)
    sender.start()
    try:
        assert deliveries.passes.acquire(timeout=5)  # the first, at start
        for task_id in range(50):
            events.publish(TaskEvent(task_id, "token", Status.POSTPROCESS_END))
            events.publish(TaskEvent(task_id, "token", Status.START, owes_callback=True))
        assert not deliveries.passes.acquire(timeout=0.5)
        events.publish(TaskEvent(50, "token", Status.CANCEL, owes_callback=True))
        assert deliveries.passes.acquire(timeout=5)
    finally:
        sender.stop()
