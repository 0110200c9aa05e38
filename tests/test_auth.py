"""Authentication as the protocol defines it, over HTTP."""

import time

import httpx
import pytest

from fluxhost.auth import Authenticator, AuthError, AuthFailure
from fluxhost.signing import KeyMode, sign_request
from fluxhost.store.database import Database
from fluxhost.store.keys import KeyStore
from fluxhost.store.nonces import NonceStore
from tests.helpers import SLUG, LiveServer, ProtocolClient

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
    signature = sign_request(client.key.api_key, "wrong", nonce)
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


def test_a_run_resent_to_another_spelling_of_its_model_is_a_replay(client):
    """The model is found whatever the case, spaces around it, or dots written as dashes."""
    headers = client.headers(str(int(time.time())))
    owner, project = SLUG.split("/")
    assert client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=headers).json()["result"] is True
    for spelling in (f"{owner}/{project.replace('.', '-')}", f"{owner.title()}/{project.upper()}",
                     f"{owner}/%20{project}"):
        refused(client.post(f"Run/{spelling}", {"prompt": "x"}, headers=headers), INVALID)
    assert client.call("Task/List", {})["total"] == "1"


def test_the_seed_flow_reuses_the_run_nonce_for_reads(client):
    headers = client.headers(str(int(time.time())))
    run = client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=headers).json()
    for _ in range(3):
        answer = client.post("Task/Detail", {"tasktoken": run["socketaccesstoken"]}, headers=headers).json()
        assert answer["result"] is True
    assert client.post("Task/List", {}, headers=headers).json()["result"] is True
    assert client.post("Tool/List", {}, headers=headers).json()["result"] is True
    # A different state-changing request may carry it too; resending one exactly is a replay.
    kill = {"tasktoken": run["socketaccesstoken"]}
    assert client.post("Task/Kill", kill, headers=headers).json()["result"] is True
    refused(client.post("Task/Kill", kill, headers=headers), INVALID)


def test_two_runs_in_one_second_share_a_seconds_nonce(client):
    """What `date +%s` signing does: one nonce, two different Runs, both meant."""
    headers = client.headers(str(int(time.time())))
    first = client.post(f"Run/{SLUG}", {"prompt": "a red fox"}, headers=headers).json()
    second = client.post(f"Run/{SLUG}", {"prompt": "a blue fox"}, headers=headers).json()
    assert first["result"] is True and second["result"] is True and first["taskid"] != second["taskid"]
    refused(client.post(f"Run/{SLUG}", {"prompt": "a blue fox"}, headers=headers), INVALID)
    assert client.call("Task/List", {})["total"] == "2"


def test_the_same_body_on_another_path_is_another_request(client):
    run = client.run()
    headers = client.headers(str(int(time.time())))
    body = {"tasktoken": run["socketaccesstoken"]}
    assert client.post("Task/Kill", body, headers=headers).json()["result"] is True
    # Cancel of the now-stopped task is refused for its state, not as a replay.
    answer = client.post("Task/Cancel", body, headers=headers)
    assert answer.status_code == 200 and answer.json()["result"] is False


def test_timestamp_nonces_outside_the_window_are_refused(make_settings):
    with LiveServer(make_settings(nonce_window_seconds=60)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        for late in (str(int(time.time()) - 120), str(int(time.time() * 1000) + 120_000)):
            refused(client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=client.headers(late)), INVALID)
        inside = str(int(time.time()) - 30)
        assert client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=client.headers(inside)).json()["result"] is True


def test_strict_nonces_are_fresh_timestamps_on_every_request(make_settings):
    with LiveServer(make_settings(engine="bench", worker_concurrency=0, nonce_mode="strict")) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        now = time.time()
        for nonce in ("12345", "987654321987654321", str(int(now) - 120), str(int(now * 1000) + 120_000)):
            refused(client.post("Task/List", {}, headers=client.headers(nonce)), INVALID)  # reads too
            refused(client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=client.headers(nonce)), INVALID)
        fresh = client.headers(str(int(now)))
        assert client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=fresh).json()["result"] is True
        assert client.post("Task/List", {}, headers=fresh).json()["total"] == "1"
        refused(client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=fresh), INVALID)  # an exact resend
        assert client.call("Task/List", {})["total"] == "1"


def test_the_strict_window_is_a_minute_unless_set(tmp_path):
    from fluxhost.settings import Settings

    assert Settings(data_dir=tmp_path, nonce_mode="strict").resolved_nonce_window_seconds == 60
    assert Settings(data_dir=tmp_path).resolved_nonce_window_seconds == 900
    assert Settings(data_dir=tmp_path, nonce_mode="strict", nonce_window_seconds=30).resolved_nonce_window_seconds == 30


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
    settings = make_settings()

    def open_database() -> Database:
        db = Database(settings.resolved_database_url)
        db.migrate()
        return db

    db = open_database()
    key = KeyStore(db).create(KeyMode.SIGNATURE)
    store = Authenticator(KeyStore(db), NonceStore(db), 3600, 3600)
    nonce = str(int(time.time()))
    caller = store.authenticate(key.api_key, nonce, sign_request(key.api_key, key.api_secret, nonce))
    store.spend_nonce(caller, nonce, "run-digest")
    reopened_db = open_database()
    reopened = Authenticator(KeyStore(reopened_db), NonceStore(reopened_db), 3600, 3600)
    with pytest.raises(AuthError) as refused:
        reopened.spend_nonce(caller, nonce, "run-digest")
    assert refused.value.failure is AuthFailure.BAD_SIGNATURE  # answered as INVALID by the hosted protocol
    reopened.spend_nonce(caller, "987654321987654321", "run-digest")  # other integers are fine once


def test_the_openssl_output_line_is_accepted_as_a_signature(client):
    nonce = str(int(time.time()))
    line = f"SHA2-256(stdin)= {sign_request(client.key.api_key, client.key.api_secret, nonce)}"
    headers = {"x-api-key": client.key.api_key, "x-nonce": nonce, "x-signature": line}
    assert client.post(f"Run/{SLUG}", {"prompt": "x"}, headers=headers).json()["result"] is True


def test_the_retention_must_cover_twice_the_window(tmp_path):
    from pydantic import ValidationError

    from fluxhost.settings import Settings

    for retention in (300, 900):  # a nonce a window ahead is acceptable until two windows after it was spent
        with pytest.raises(ValidationError, match="at least twice nonce_window_seconds"):
            Settings(data_dir=tmp_path, nonce_window_seconds=600, nonce_retention_seconds=retention)
    Settings(data_dir=tmp_path, nonce_window_seconds=600, nonce_retention_seconds=1200)


def test_nonces_spent_before_the_upgrade_are_kept(tmp_path):
    from alembic import command
    from sqlalchemy import text

    from fluxhost.store.database import alembic_config

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config(str(db.engine.url))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        connection.execute(text("INSERT INTO projects (id, name, webhook_secret, created_at) VALUES (1, 'p', 'w', 0)"))
        connection.execute(text("INSERT INTO api_keys (id, project_id, name, key_digest, key_prefix, secret, mode, "
                                "created_at) VALUES (1, 1, 'k', 'd', 'p', 's', 'signature', 0)"))
        connection.execute(text("INSERT INTO used_nonces (api_key_id, nonce, used_at) VALUES (1, '1700000000', 5)"))
    db.migrate()
    with db.read() as connection:
        rows = connection.execute(text("SELECT api_key_id, nonce, request_digest, used_at FROM spent_requests")).all()
    assert [tuple(row) for row in rows] == [(1, "1700000000", "", 5.0)]
