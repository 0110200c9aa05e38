"""Authentication as the protocol defines it, over HTTP."""

import time

import httpx
import pytest

from fluxhost.auth import KeyMode, KeyStore, sign
from tests.helpers import SLUG, ProtocolClient

UNKNOWN = "Project authorization is not founded."
REQUIRED = "Project requires signature authentication. x-signature and x-nonce headers are required."
INVALID = "Project authorization is not valid."


def refused(response: httpx.Response, message: str) -> None:
    assert response.status_code == 401
    assert response.json() == {"result": False, "errors": [{"code": 0, "message": message}]}


def test_a_good_signature_passes(client):
    assert client.run()["result"] is True


def test_wrong_secret(server, client):
    nonce = str(int(time.time()))
    signature = sign(client.key.api_key, "wrong", nonce)
    headers = {"x-api-key": client.key.api_key, "x-nonce": nonce, "x-signature": signature}
    refused(client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=headers), INVALID)


def test_missing_signature_headers(client):
    refused(client.post("Task/List", {}, headers={"x-api-key": client.key.api_key}), REQUIRED)
    refused(client.post("Task/List", {}, headers={"x-api-key": client.key.api_key, "x-nonce": "1"}), REQUIRED)


def test_unknown_and_missing_keys(client):
    refused(client.post("Task/List", {}, headers={"x-api-key": "not-a-key"}), UNKNOWN)
    refused(client.post("Task/List", {}, headers={}), UNKNOWN)


def test_a_replayed_nonce_never_makes_a_second_task(client):
    headers = client.headers(str(int(time.time())))
    assert client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=headers).json()["result"] is True
    refused(client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=headers), INVALID)
    assert client.call("Task/List", {})["total"] == "1"


def test_the_seed_flow_reuses_the_run_nonce_for_reads(client):
    headers = client.headers(str(int(time.time())))
    run = client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=headers).json()
    for _ in range(3):
        answer = client.post("Task/Detail", {"tasktoken": run["socketaccesstoken"]}, headers=headers).json()
        assert answer["result"] is True
    assert client.post("Task/List", {}, headers=headers).json()["result"] is True
    assert client.post("Tool/List", {}, headers=headers).json()["result"] is True
    # ...but a state-changing call with it is a replay.
    refused(client.post("Task/Kill", {"tasktoken": run["socketaccesstoken"]}, headers=headers), INVALID)


def test_stale_timestamp_nonces_are_refused(client):
    for stale in (str(int(time.time()) - 3 * 86_400), str(int(time.time() * 1000) - 3 * 86_400_000)):
        refused(client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=client.headers(stale)), INVALID)


def test_key_only_mode(server):
    key = server.service.keys.create(KeyMode.KEY_ONLY)
    client = ProtocolClient(server.base_url, key, signed=False)
    task = client.run()
    assert client.detail(task["taskid"])["id"] == task["taskid"]


def test_revoked_keys_are_unknown(server, client):
    assert server.service.keys.revoke(client.key.api_key)
    refused(client.post("Task/List", {}), UNKNOWN)


def test_spent_nonces_survive_a_restart(make_settings):
    from fluxhost.db import Database

    settings = make_settings()

    def open_store() -> KeyStore:
        db = Database(settings.resolved_database_url)
        db.migrate()
        return KeyStore(db, 3600)

    store = open_store()
    key = store.create(KeyMode.SIGNATURE)
    nonce = str(int(time.time()))
    caller = store.authenticate(key.api_key, nonce, sign(key.api_key, key.api_secret, nonce))
    store.spend_nonce(caller, nonce)
    reopened = open_store()
    with pytest.raises(Exception, match=INVALID):
        reopened.spend_nonce(caller, nonce)
    reopened.spend_nonce(caller, "987654321987654321")  # other integers are fine once


def test_the_openssl_output_line_is_accepted_as_a_signature(client):
    nonce = str(int(time.time()))
    line = f"SHA2-256(stdin)= {sign(client.key.api_key, client.key.api_secret, nonce)}"
    headers = {"x-api-key": client.key.api_key, "x-nonce": nonce, "x-signature": line}
    assert client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=headers).json()["result"] is True
