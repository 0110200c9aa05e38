"""Numbers JSON cannot carry (NaN, Infinity, -Infinity, 1e400): refused at parse by every door,
and never able to take a task list down once stored (a migration repairs what was)."""

import json

import httpx
import pytest

from fluxhost.signing import KeyMode
from fluxhost.store.database import Database
from fluxhost.store.tasks import TaskStore
from tests.helpers import FOX_ORDER, SLUG, LiveServer, ProtocolClient

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


@pytest.fixture
def live(make_settings):
    with LiveServer(make_settings(engine="bench", worker_concurrency=0)) as server:
        yield server


@pytest.mark.parametrize("literal", NON_FINITE)
def test_the_hosted_door_refuses_them_and_queues_nothing(live, literal):
    client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
    for body in (f'{{"prompt": {literal}}}', f'{{"prompt": "a fox", "seed": {literal}}}',
                 f'{{"prompt": "a fox", "extra": [1, {{"deep": {literal}}}]}}'):
        answer = client.post(f"Run/{SLUG}", content=body.encode(),
                             headers={**client.headers(), "content-type": "application/json"})
        assert answer.status_code == 200 and answer.json()["result"] is False, body
        assert answer.json()["errors"][0]["message"] == "Request parameters are invalid."
    assert client.call("Task/List", {})["total"] == "0"


@pytest.mark.parametrize("literal", NON_FINITE)
def test_the_bfl_and_openai_doors_refuse_them_in_their_own_shapes(live, literal):
    key = live.service.keys.create(KeyMode.SIGNATURE)
    bfl = httpx.post(f"{live.base_url}/bfl/v1/flux-pro-1.1", content=f'{{"prompt": "x", "seed": {literal}}}',
                     headers={"x-key": f"{key.api_key}:{key.api_secret}", "content-type": "application/json"})
    assert bfl.status_code == 422 and bfl.json()["detail"][0]["loc"] == ["body", "seed"]
    openai = httpx.post(f"{live.base_url}/openai/v1/images/generations", content=f'{{"prompt": {literal}}}',
                        headers={"authorization": f"Bearer {key.api_key}:{key.api_secret}",
                                 "content-type": "application/json"})
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "prompt"
    client = ProtocolClient(live.base_url, key)
    assert client.call("Task/List", {})["total"] == "0"


def test_a_stored_nan_never_takes_the_list_down(make_settings):
    """A task kept before the doors refused them (SQLite took NaN; PostgreSQL's json never did)."""
    with LiveServer(make_settings(engine="bench", worker_concurrency=0, database_url=None)) as server:
        key = server.service.keys.create(KeyMode.SIGNATURE)
        client = ProtocolClient(server.base_url, key)
        project_id = server.service.auth.authenticate_token(f"{key.api_key}:{key.api_secret}").project_id
        kept = server.service.tasks.create(project_id, SLUG, {"prompt": float("nan"), "seed": [float("-inf")]},
                                           FOX_ORDER)
        client.run(prompt="a fox")
        listed = client.call("Task/List", {})
        assert listed["total"] == "2"
        detail = client.detail(str(kept.id))
        assert detail["parameters"] == {"prompt": "NaN", "seed": ["-Infinity"]}


def test_the_migration_writes_stored_nans_as_text(tmp_path):
    from alembic import command
    from sqlalchemy import text

    from fluxhost.store.database import alembic_config

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config(str(db.engine.url))
    stored = ['{"prompt": NaN, "seed": [1, {"x": -Infinity}]}', '{"prompt": "NaN bread and Infinity pie"}',
              '{"prompt": "a fox", "guidance": 3.5}']
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
        connection.execute(text("INSERT INTO projects (id, name, webhook_secret, created_at) VALUES (1, 'p', 'w', 0)"))
        for task_id, parameters in enumerate(stored, start=1):
            connection.execute(text(
                "INSERT INTO tasks (id, uuid, socket_token, project_id, model_slug, parameters, work_order, "
                "callback_url, status, outcome, debug_output, debug_error, attempts, create_time) "
                "VALUES (:id, :uuid, :token, 1, :slug, :parameters, :order, '', 'task_queue', NULL, '', '', 0, 0)"),
                {"id": task_id, "uuid": f"u{task_id}", "token": f"t{task_id}", "slug": SLUG,
                 "parameters": parameters, "order": json.dumps(FOX_ORDER.encode())})
    db.migrate()
    tasks = TaskStore(db)
    assert [dict(tasks.get(task_id).parameters) for task_id in (1, 2, 3)] == [
        {"prompt": "NaN", "seed": [1, {"x": "-Infinity"}]}, {"prompt": "NaN bread and Infinity pie"},
        {"prompt": "a fox", "guidance": 3.5}]
