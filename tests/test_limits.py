"""Limits a server enforces, each a setting, each refused in the protocol's shape: requests per key
per minute (429 with Retry-After), unfinished tasks per key, per project and per model queue,
body size (413) and prompt length."""

import os
import socket

import httpx
import pytest

from fluxhost.limits import LocalRequestRate, RateLimited, RedisRequestRate
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, ProtocolClient

REDIS = os.environ.get("FLUXHOST_TEST_REDIS")


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


@pytest.mark.skipif(not REDIS, reason="needs Redis (FLUXHOST_TEST_REDIS, set by .ci/run)")
def test_api_processes_sharing_redis_count_a_key_once():
    clock = [6000.0 * 60 + os.getpid() % 1000 * 60]  # a minute no other run of this test used
    first, second = (RedisRequestRate(REDIS, 3, clock=lambda: clock[0]) for _ in range(2))
    first.take(7)
    second.take(7)
    first.take(7)
    with pytest.raises(RateLimited):
        second.take(7)
    clock[0] += 60
    second.take(7)  # a new minute


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
