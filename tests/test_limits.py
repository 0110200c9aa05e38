"""Limits a server enforces, each a setting, each refused in the protocol's shape: requests per key
per minute (429 with Retry-After), failed authentications per address and per key (429),
unfinished tasks per key, per project and per model queue, body size (413), the time a body
takes to arrive (408) and prompt length."""

import json
import os
import socket
import time

import httpx
import pytest

from fluxhost.limits import (
    AuthFailureLimit,
    LocalMinuteCounts,
    LocalRequestRate,
    RateLimited,
    RedisMinuteCounts,
    RedisRequestRate,
    TooManyAuthFailures,
    counted_address,
)
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, ProtocolClient


def refusal(answer: dict) -> str:
    assert answer["result"] is False, answer
    return answer["errors"][0]["message"]


def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_do_not(make_settings):
    with LiveServer(make_settings(engine="bench", worker_concurrency=0, rate_limit_per_minute=5)) as live:
        eager = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.KEY_ONLY), signed=False)
        other = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.KEY_ONLY), signed=False)
        for _ in range(5):
            assert eager.post("Tool/List").status_code == 200
        refused = eager.post("Tool/List")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 12  # 5 a minute: one more every 12 s
        assert refusal(refused.json()).startswith("Too many requests: this key may make 5 per minute. Retry in ")
        assert other.post("Tool/List").status_code == 200
        stranger = httpx.post(f"{live.base_url}/v1/Tool/List", headers={"x-api-key": "nobody"}, timeout=10)
        assert stranger.status_code == 401  # unknown keys are refused as such, not counted


def test_the_token_bucket_refills_evenly():
    now = [0.0]
    rate = LocalRequestRate(60, clock=lambda: now[0])
    for _ in range(60):
        rate.take(1)
    with pytest.raises(RateLimited) as refused:
        rate.take(1)
    assert refused.value.retry_after == 1
    now[0] += 1.0
    rate.take(1)  # one more a second
    with pytest.raises(RateLimited):
        rate.take(1)
    rate.take(2)  # every key has its own bucket


def test_requests_pass_uncounted_while_redis_cannot_be_reached(caplog):
    with socket.socket() as unused:  # a loopback port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    rate = RedisRequestRate(f"redis://127.0.0.1:{port}/0", 1)
    for _ in range(3):
        rate.take(7)
    assert caplog.text.count("request rates go uncounted while Redis cannot be reached") == 1


def test_api_processes_sharing_redis_count_a_key_once(redis_url):
    clock = [6000.0 * 60 + os.getpid() % 1000 * 60]  # a minute no other run of this test used
    first, second = (RedisRequestRate(redis_url, 3, clock=lambda: clock[0]) for _ in range(2))
    first.take(7)
    second.take(7)
    first.take(7)
    with pytest.raises(RateLimited):
        second.take(7)
    clock[0] += 60
    second.take(7)  # a new minute


def sent_from(address: str) -> httpx.Client:
    """A client whose connections leave from ``address`` (any of 127.0.0.0/8 on Linux), to the
    server on 127.0.0.1: another client address without leaving the machine."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def test_failed_authentications_lock_out_their_address_then_their_key(make_settings, monkeypatch):
    settings = make_settings(engine="bench", worker_concurrency=0, auth_failure_limit_per_address=3,
                             auth_failure_limit_per_key=8)
    with LiveServer(settings) as live:
        monkeypatch.setattr(live.service.auth.failures, "clock", lambda: 1_000_000 * 60 + 30.0)  # one minute
        key, bystander = (live.service.keys.create(KeyMode.SIGNATURE) for _ in range(2))
        client = ProtocolClient(live.base_url, key)

        def post(address: str, headers: dict[str, str], api_key: str = key.api_key) -> httpx.Response:
            with sent_from(address) as http:
                return http.post(f"{live.base_url}/v1/Task/List", json={}, headers={**headers, "x-api-key": api_key})

        def forged() -> dict[str, str]:
            return {**client.headers(), "x-signature": "0" * 64}

        for _ in range(3):
            assert post("127.0.0.1", forged()).status_code == 401
        locked = post("127.0.0.1", client.headers())  # a good signature, from the address that failed
        assert (locked.status_code, locked.headers["retry-after"]) == (429, "30")
        assert refusal(locked.json()) == ("Too many failed authentications from this address: at most 3 a minute. "
                                          "Retry in 30 s.")
        for _ in range(10):  # refused before any check: counted for nothing
            assert post("127.0.0.1", forged()).status_code == 429
        assert post("127.0.0.2", client.headers()).status_code == 200  # the key works from elsewhere

        for address, failures in (("127.0.0.2", 3), ("127.0.0.3", 2)):  # 3 + 3 + 2: the key's budget
            for _ in range(failures):
                assert post(address, forged()).status_code == 401
        refused = post("127.0.0.4", client.headers())
        assert refused.status_code == 429
        assert refusal(refused.json()).startswith("Too many failed authentications for this API key: at most 8 a "
                                                  "minute.")
        # Another key is not locked by this one's failures; unknown keys count for their address only.
        assert post("127.0.0.4", {}, api_key="no-such-key").status_code == 401
        assert post("127.0.0.4", {}, api_key=bystander.api_key).status_code == 401  # no signature: a failure
        assert post("127.0.0.4", {}, api_key="no-such-key").status_code == 401
        assert post("127.0.0.4", {}, api_key="no-such-key").status_code == 429

        with sent_from("127.0.0.5") as http:  # BFL's door: a wrong secret is a failure too, refused its own way
            for _ in range(3):
                wrong = http.post(f"{live.base_url}/bfl/v1/flux-pro-1.1", json={"prompt": "x"},
                                  headers={"x-key": f"{bystander.api_key}:wrong"})
                assert wrong.status_code == 403
            good = http.post(f"{live.base_url}/bfl/v1/flux-pro-1.1", json={"prompt": "x"},
                             headers={"x-key": f"{bystander.api_key}:{bystander.api_secret}"})
        assert (good.status_code, good.headers["retry-after"]) == (429, "30")
        assert good.json()["detail"].startswith("Too many failed authentications from this address")


def test_failure_budgets_last_their_minute():
    now = [60.0 * 100]
    limit = AuthFailureLimit(2, 5, LocalMinuteCounts(), clock=lambda: now[0])
    limit.record("10.0.0.1", 7)
    limit.record("10.0.0.1", None)
    limit.check("10.0.0.2", 7)
    with pytest.raises(TooManyAuthFailures) as refused:
        limit.check("10.0.0.1", None)
    assert refused.value.retry_after == 60
    now[0] += 59.5
    with pytest.raises(TooManyAuthFailures):
        limit.check("10.0.0.1", 8)
    now[0] += 0.5  # a new minute
    limit.check("10.0.0.1", 7)
    off = AuthFailureLimit(0, 0, LocalMinuteCounts())
    for _ in range(10):
        off.record("10.0.0.1", 7)
    off.check("10.0.0.1", 7)


def test_an_ipv6_host_counts_its_whole_64_as_one_address():
    """It may send from any of its 2**64 addresses: counted apart, each would get its own budget."""
    limit = AuthFailureLimit(2, 0, LocalMinuteCounts(), clock=lambda: 60.0 * 100)
    limit.record("2001:db8:1:2::1", None)
    limit.record("2001:db8:1:2:ffff:ffff:ffff:ffff", None)
    with pytest.raises(TooManyAuthFailures):
        limit.check("2001:db8:1:2:abcd::7", None)
    limit.check("2001:db8:1:3::1", None)  # the next /64: someone else
    limit.record("::ffff:10.0.0.1", None)  # IPv4 written as IPv6 is that IPv4 address
    limit.record("10.0.0.1", None)
    with pytest.raises(TooManyAuthFailures):
        limit.check("10.0.0.1", None)
    assert [counted_address(address) for address in ("10.0.0.1", "2001:db8::9", "testclient")] == [
        "10.0.0.1", "2001:db8::/64", "testclient"]


def test_api_processes_sharing_redis_count_failures_once(redis_url):
    minute = 7000 * 60 + os.getpid() % 1000 * 60  # a minute no other run of this test used
    first, second = (AuthFailureLimit(2, 100, RedisMinuteCounts(redis_url, "failed authentications"),
                                      clock=lambda: minute + 1.0) for _ in range(2))
    first.record("10.9.8.7", 7)
    second.record("10.9.8.7", 7)
    with pytest.raises(TooManyAuthFailures):
        first.check("10.9.8.7", None)


def trickled(port: int, head: str, start: bytes) -> tuple[bytes, bytes, float]:
    """Send a request's head and the start of a body that never comes whole; the answer's head and
    body, and the seconds until the server closed the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=8) as connection:
        connection.sendall(head.encode() + start)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    answer_head, _, body = answer.partition(b"\r\n\r\n")
    return answer_head, body, time.monotonic() - started


def test_a_body_that_trickles_in_is_refused_at_the_deadline_and_its_connection_closed(make_settings):
    with LiveServer(make_settings(engine="bench", worker_concurrency=0, body_read_seconds=1)) as live:
        key = live.service.keys.create(KeyMode.KEY_ONLY)
        message = "The request body took too long: it must arrive within 1 s."
        doors = {
            f"/v1/Run/{SLUG}": {"result": False, "errors": [{"code": 0, "message": message}]},
            "/bfl/v1/flux-pro-1.1": {"detail": message},
            "/openai/v1/images/generations": {"error": {"message": message, "type": "invalid_request_error",
                                                        "param": None, "code": None}},
        }
        for path, refusal_body in doors.items():
            head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: 1000\r\nx-api-key: {key.api_key}\r\nx-key: {key.api_key}\r\n"
                    f"Authorization: Bearer {key.api_key}\r\n\r\n")
            answer_head, body, seconds = trickled(live.settings.port, head, b'{"prompt": "a fox')
            assert answer_head.startswith(b"HTTP/1.1 408 "), (path, answer_head)
            assert b"connection: close" in answer_head.lower()
            assert json.loads(body) == refusal_body
            assert 1 <= seconds < 5, (path, seconds)
        assert ProtocolClient(live.base_url, key, signed=False).run()["result"] is True


def test_unfinished_task_limits_per_key_project_and_model_queue(make_settings):
    settings = make_settings(engine="bench", worker_concurrency=0, max_unfinished_tasks_per_key=2,
                             max_unfinished_tasks_per_project=3, max_queued_tasks_per_model=4)
    with LiveServer(settings) as live:
        first_key = live.service.keys.create(KeyMode.SIGNATURE, project="studio")
        first = ProtocolClient(live.base_url, first_key)
        second = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE, project="studio"))
        elsewhere = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        ids = [first.run()["taskid"], first.run()["taskid"]]
        headers = first.headers()
        over_key = first.post(f"Run/{SLUG}", {"prompt": "one more"}, headers=headers)
        assert over_key.status_code == 200
        assert refusal(over_key.json()) == ("Too many unfinished tasks for this API key: 2 queued or running, "
                                            "at most 2. Wait for some to end, or cancel some.")
        second.run()
        assert refusal(second.call(f"Run/{SLUG}", {"prompt": "x"})).startswith(
            "Too many unfinished tasks for this project: 3 queued or running, at most 3.")
        elsewhere.run()
        assert refusal(elsewhere.call(f"Run/{SLUG}", {"prompt": "x"})) == (
            f"The queue of {SLUG} is full (4 tasks waiting): it would not run soon. Try again later.")

        assert first.call("Task/Cancel", {"taskid": ids[0]})["result"] is True
        again = first.post(f"Run/{SLUG}", {"prompt": "one more"}, headers=headers).json()
        assert again["result"] is True  # the refused Run spent no nonce: the same request now passes


def test_an_oversized_body_is_refused_before_it_is_read_whole(make_settings):
    with LiveServer(make_settings(engine="bench", worker_concurrency=0, max_body_bytes=10_000)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.KEY_ONLY), signed=False)
        expected = {"result": False, "errors": [
            {"code": 0, "message": "The request body is too large: at most 10000 bytes."}]}
        declared = client.post(f"Run/{SLUG}", {"prompt": "x" * 20_000})
        assert (declared.status_code, declared.json()) == (413, expected)

        def chunks():  # no Content-Length: counted as it streams
            for _ in range(40):
                yield b"x" * 1000

        streamed = httpx.post(f"{live.base_url}/v1/Run/{SLUG}", content=chunks(), headers=client.headers(),
                              timeout=10)
        assert (streamed.status_code, streamed.json()) == (413, expected)
        assert client.run(prompt="a fox")["result"] is True


def test_a_prompt_longer_than_the_setting_is_refused(make_settings):
    with LiveServer(make_settings(engine="bench", worker_concurrency=0, max_prompt_chars=20)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.KEY_ONLY), signed=False)
        assert refusal(client.call(f"Run/{SLUG}", {"prompt": "x" * 21})) == (
            "Request parameter [prompt] must be between 1 and 20 characters")
        assert client.run(prompt="x" * 20)["result"] is True


def test_the_tallies_of_unfinished_tasks_match_a_count_through_every_change(tmp_path, database_url):
    """What a Run checks against the limits: on SQLite the tallies triggers keep (migration 0011,
    which also counts the tasks already there), elsewhere a count; either way, the same numbers as
    counting the tasks, through inserts, single and bulk status changes, and deletes."""
    import random

    from alembic import command
    from sqlalchemy import text

    from fluxhost.statuses import TERMINAL, UNFINISHED, Status
    from fluxhost.store.database import Database, alembic_config
    from fluxhost.store.tasks import TaskStore

    db = Database(database_url or f"sqlite:///{tmp_path / 'tallies.db'}")
    config = alembic_config(str(db.engine.url))
    statuses = [status.value for status in (*UNFINISHED, *TERMINAL)]
    keys, projects, models = (1, 2, None), (1, 2), ("a/one", "b/two")
    draw = random.Random(7)

    def add_tasks(connection, count: int) -> None:
        for _ in range(count):
            connection.execute(text(
                "INSERT INTO tasks (uuid, socket_token, project_id, api_key_id, model_slug, parameters, work_order, "
                "callback_url, status, debug_output, debug_error, attempts, create_time) "
                "VALUES (:uuid, :uuid, :project, :key, :model, '{}', '{}', '', :status, '', '', 0, 0)"),
                {"uuid": f"u{draw.random()}", "project": draw.choice(projects), "key": draw.choice(keys),
                 "model": draw.choice(models), "status": draw.choice(statuses)})

    def counted(key: int, project: int, model: str) -> tuple[int, int, int]:
        with db.read() as connection:
            rows = connection.execute(text("SELECT api_key_id, project_id, model_slug, status FROM tasks")).all()
        unfinished = [row for row in rows if row.status in UNFINISHED]
        return (sum(row.api_key_id == key for row in unfinished),
                sum(row.project_id == project for row in unfinished),
                sum(row.model_slug == model and row.status == Status.QUEUE for row in unfinished))

    def assert_tallies_match() -> None:
        store = TaskStore(db)
        for key, project, model in ((k, p, m) for k in (1, 2) for p in projects for m in models):
            found = store.unfinished_for_run(key, project, model)
            assert (found.of_key, found.of_project, found.queued_for_model) == counted(key, project, model)

    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0010")
        for project in projects:
            connection.execute(text("INSERT INTO projects (id, name, webhook_secret, created_at) "
                                    "VALUES (:id, :name, 'w', 0)"), {"id": project, "name": f"p{project}"})
        add_tasks(connection, 30)
    db.migrate()
    assert_tallies_match()
    for _ in range(40):
        with db.write() as connection:
            change = draw.choice(("insert", "one", "bulk", "delete"))
            if change == "insert":
                add_tasks(connection, 3)
            elif change == "one":
                connection.execute(text("UPDATE tasks SET status = :status WHERE id = (SELECT MIN(id) FROM tasks "
                                        "WHERE id >= :id)"),
                                   {"status": draw.choice(statuses), "id": draw.randint(1, 60)})
            elif change == "bulk":
                connection.execute(text("UPDATE tasks SET status = :status "
                                        "WHERE model_slug = :model AND status = :was"),
                                   {"status": draw.choice(statuses), "model": draw.choice(models),
                                    "was": draw.choice(statuses)})
            else:
                connection.execute(text("DELETE FROM tasks WHERE id = (SELECT MIN(id) FROM tasks WHERE id >= :id)"),
                                   {"id": draw.randint(1, 60)})
        assert_tallies_match()
    db.dispose()
