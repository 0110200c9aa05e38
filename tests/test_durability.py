"""Tasks survive the process being killed: a real `fluxhost serve`, SIGKILLed mid-run, restarted."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fluxhost.events import LocalEventBus, TaskEvent
from fluxhost.runtime.host import worker_may_be_alive
from fluxhost.runtime.janitor import Janitor
from fluxhost.statuses import TERMINAL
from fluxhost.storage.local import LocalFileStore
from fluxhost.store.database import Database
from fluxhost.store.keys import NewKey
from fluxhost.store.tasks import TaskStore
from fluxhost.store.work import WorkStore
from tests.helpers import FOX_ORDER, SLUG, ProtocolClient, database_with_project, free_port

FLUXHOST = str(Path(sys.executable).with_name("fluxhost"))


@pytest.fixture
def serve_env(tmp_path, tiny_weights):
    port = free_port()
    env = {
        **os.environ,
        "FLUXHOST_DATA_DIR": str(tmp_path / "data"),
        "FLUXHOST_PORT": str(port),
        "FLUXHOST_DEVICES": "cpu",  # where a step takes long enough for the kill to land mid-run
        "FLUXHOST_TORCH_THREADS": "2",
        "FLUXHOST_MODELS": json.dumps({SLUG: {"weights": str(tiny_weights), "steps": 4, "max_sequence_length": 32}}),
    }
    return env, f"http://127.0.0.1:{port}"


def start(env) -> subprocess.Popen:
    return subprocess.Popen([FLUXHOST, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_up(base_url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited"
        try:
            httpx.post(f"{base_url}/v1/Tool/List", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not come up")


def child_pids(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def running(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie (an orphan whose new parent does not reap it) has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow  # `fluxhost` processes
def test_sigkill_loses_no_task(serve_env):
    env, base_url = serve_env
    created = subprocess.run([FLUXHOST, "keys", "create", "--json"], env=env, capture_output=True, text=True,
                             check=True)
    key_json = json.loads(created.stdout)
    key = NewKey(key_json["id"], key_json["project"], key_json["name"], key_json["mode"],
                 key_json["api_key"], key_json["api_secret"], key_json["webhook_secret"])
    client = ProtocolClient(base_url, key)

    process = start(env)
    try:
        wait_up(base_url, process)
        ids = [client.run(seed=str(n))["taskid"] for n in range(3)]
        client.wait(ids[0], ("task_start",))
        orphans = child_pids(process.pid)  # the worker process (and multiprocessing's resource tracker)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        db = Database(f"sqlite:///{Path(env['FLUXHOST_DATA_DIR']) / 'fluxhost.db'}")
        assert TaskStore(db).get(int(ids[0])).status not in TERMINAL  # the kill landed mid-run
        db.dispose()

        process = start(env)
        wait_up(base_url, process)
        deadline = time.monotonic() + 30  # the worker stops its generation at the next step, then exits
        while any(running(pid) for pid in orphans):
            assert time.monotonic() < deadline, "the worker process outlived the killed service"
            time.sleep(0.1)
        tasks = [client.wait(taskid, timeout=180) for taskid in ids]
    finally:
        process.kill()
        process.wait(10)
    for task in tasks:
        assert task["status"] == "task_postprocess_end" and task["pexit"] == "0", task
        assert len(task["outputs"]) == 1


@pytest.fixture
def stores_and_project(tmp_path) -> tuple[TaskStore, WorkStore, int]:
    db, project_id = database_with_project(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return TaskStore(db), WorkStore(db), project_id


def test_a_task_whose_worker_keeps_dying_fails_with_a_reason(stores_and_project):
    tasks, work, project_id = stores_and_project
    task = tasks.create(project_id, SLUG, {}, FOX_ORDER)
    for attempt in range(1, 3):
        assert work.claim_next(f"worker-{attempt}", [SLUG], lease_seconds=60).id == task.id
        recovery = work.recover(max_attempts=2, dead_workers={f"worker-{attempt}"})
        if attempt == 1:
            assert recovery.requeued == [(task.id, SLUG)] and tasks.get(task.id).status == "task_queue"
    assert [ended.task_id for ended in recovery.failed] == [task.id]
    lost = tasks.get(task.id)
    assert lost.status == "task_postprocess_end" and lost.outcome == "failed" and "lost 2 times" in lost.debug_error


def test_only_expired_leases_are_taken_back(stores_and_project):
    tasks, work, project_id = stores_and_project
    fresh, stale = tasks.create(project_id, SLUG, {}, FOX_ORDER), tasks.create(project_id, SLUG, {}, FOX_ORDER)
    work.claim_next("alive", [SLUG], lease_seconds=600)
    work.claim_next("dead", [SLUG], lease_seconds=-1)
    assert work.recover(max_attempts=3, alive_worker="dead").requeued == []  # our own: still running
    assert work.recover(max_attempts=3).requeued == [(stale.id, SLUG)]
    assert tasks.get(fresh.id).status == "task_accept"


def test_only_a_dead_process_of_this_host_is_known_dead():
    ended = subprocess.Popen(["true"])
    ended.wait()  # reaped: its pid names no process (Linux hands pids out in increasing order)
    host = socket.gethostname()
    assert not worker_may_be_alive(f"{host}-{ended.pid}-abc123")
    assert worker_may_be_alive(f"{host}-{os.getpid()}-abc123")
    assert worker_may_be_alive(f"another-host-{ended.pid}-abc123")
    assert worker_may_be_alive("not-a-worker-id")


def test_tasks_ended_before_the_upgrade_keep_how_they_came_out(tmp_path):
    """Migration 0005: pexit and the moderation wording of debug_error become the outcome column,
    and the stored work order still reads back."""
    from alembic import command
    from sqlalchemy import text

    from fluxhost.store.database import alembic_config
    from fluxhost.store.records import TaskView

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config(str(db.engine.url))
    ended = [("task_postprocess_end", "0", ""), ("task_postprocess_end", "1", "RuntimeError: boom"),
             ("task_error", "1", "Request Moderated: violence"), ("task_postprocess_end", "1", "Content Moderated: x"),
             ("task_cancel", "-1", ""), ("task_queue", "", "")]
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
        connection.execute(text("INSERT INTO projects (id, name, webhook_secret, created_at) VALUES (1, 'p', 'w', 0)"))
        for task_id, (status, pexit, error) in enumerate(ended, start=1):
            connection.execute(text(
                "INSERT INTO tasks (id, uuid, socket_token, project_id, model_slug, parameters, request, callback_url, "
                "status, pexit, debug_output, debug_error, attempts, create_time) "
                "VALUES (:id, :uuid, :token, 1, :slug, '{}', :order, '', :status, :pexit, '', :error, 1, 0)"),
                {"id": task_id, "uuid": f"u{task_id}", "token": f"t{task_id}", "slug": SLUG, "status": status,
                 "pexit": pexit, "error": error, "order": json.dumps(FOX_ORDER.encode())})
    db.migrate()
    tasks = TaskStore(db)
    found: list[TaskView] = [tasks.get(task_id) for task_id in range(1, len(ended) + 1)]
    assert [task.outcome for task in found] == ["completed", "failed", "moderated", "moderated", "stopped", None]
    assert all(task.order == FOX_ORDER for task in found)


def test_migration_0008_adds_the_uploads_table_as_the_schema_declares_it(tmp_path, database_url):
    """Migration 0008 on a database at 0007 with a task in it: the uploads table, and the whole
    schema matching the models; downgrading to 0007 takes it away again and leaves the task."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect, select, text

    from fluxhost.store import schema
    from fluxhost.store.database import alembic_config
    from fluxhost.store.schema import Base
    from fluxhost.store.uploads import NewUpload, UploadStore

    db = Database(database_url or f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config(str(db.engine.url))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0007")
        connection.execute(text("INSERT INTO projects (id, name, webhook_secret, created_at) VALUES (1, 'p', 'w', 0)"))
        connection.execute(text(
            "INSERT INTO tasks (id, uuid, socket_token, project_id, model_slug, parameters, work_order, "
            "callback_url, status, debug_output, debug_error, attempts, create_time) "
            "VALUES (1, 'u1', 't1', 1, :slug, '{}', :order, '', 'task_queue', '', '', 0, 0)"),
            {"slug": SLUG, "order": json.dumps(FOX_ORDER.encode())})
    db.migrate()
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    uploads = UploadStore(db)
    upload = uploads.reserve(NewUpload(1, None, "a.png", "f" * 64, "upload.png", "image/png", 10), 0, now=5.0)
    assert uploads.list(1, 0, 10) == (1, [upload])

    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0007")
    assert "uploads" not in inspect(db.engine).get_table_names()
    with db.engine.connect() as connection:  # the columns of 0007 only: later ones added to tasks are gone
        assert connection.execute(select(schema.tasks.c.work_order)).scalar_one() == FOX_ORDER.encode()
    db.migrate()
    assert uploads.list(1, 0, 10) == (0, [])
    db.dispose()


def test_a_task_recovery_gives_up_on_is_told_to_its_followers_as_a_failure(tmp_path):
    """Its socket's followers wait for its end: recovery failed it in the store and told no one."""
    db, project_id = database_with_project(f"sqlite:///{tmp_path / 'db.sqlite'}")
    tasks, work = TaskStore(db), WorkStore(db)
    task = tasks.create(project_id, SLUG, {}, FOX_ORDER, callback_url="https://example.com/hook")
    events = LocalEventBus()
    heard: list[TaskEvent] = []
    events.subscribe(heard.append)
    janitor = Janitor(work, LocalFileStore(tmp_path / "files", "http://127.0.0.1:1/files"), events, "host-1-abcdef",
                      max_attempts=1, lease_seconds=60, requeued=lambda task_id, slug: None)
    work.claim_next("host-2-abcdef", [SLUG], lease_seconds=-1)  # another host's, whose lease ran out
    janitor.recover()
    assert [(event.task_id, event.token, event.type.value, event.owes_callback) for event in heard] == [
        (task.id, task.socket_token, "task_error_full", False),
        (task.id, task.socket_token, "task_postprocess_end", True)]
    assert "lost 1 times" in heard[0].text
