"""Disk and database faults against the running service: an output folder that cannot be written
fails the task with a clear reason and the service goes on; a locked database answers 503 in the
protocol's shape, loses nothing accepted, and the service recovers by itself."""

import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from fluxhost.orders import RunRequest
from fluxhost.service import Service
from fluxhost.signing import KeyMode
from fluxhost.statuses import Status
from fluxhost.store.database import Database
from fluxhost.store.schema import tasks
from tests.helpers import SLUG, LiveServer, ProtocolClient


def stored_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def test_an_unwritable_output_folder_fails_the_task_clearly_and_the_service_goes_on(make_settings):
    settings = make_settings(engine="bench", steps=2)
    with LiveServer(settings) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        files = settings.files_dir
        files.mkdir(parents=True, exist_ok=True)
        files.rename(files.with_name("files-away"))
        files.write_bytes(b"")  # where the folder was: nothing can be created under it (even as root)
        failed = client.wait(client.run(seed="1")["taskid"])
        assert failed["pexit"] != "0" and failed["outputs"] == []
        assert failed["debugerror"].startswith("the image could not be stored (")
        assert "Traceback" not in failed["debugerror"]

        files.unlink()
        files.with_name("files-away").rename(files)
        done = client.wait(client.run(seed="2")["taskid"])
        assert done["pexit"] == "0"
        assert httpx.get(done["outputs"][0]["url"], timeout=10).status_code == 200
        assert len(stored_files(files)) == 1  # the failed run left nothing behind


def lock_database(settings) -> sqlite3.Connection:
    """Another program holding SQLite's write lock (a backup tool, a migration by hand)."""
    holder = sqlite3.connect(settings.resolved_database_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_a_locked_database_answers_503_and_loses_nothing(make_settings, caplog):
    settings = make_settings(engine="bench", bench_step_ms=50, steps=20, database_timeout_seconds=0.3)
    if not settings.resolved_database_url.startswith("sqlite"):
        pytest.skip("the lock taken here is SQLite's")
    with LiveServer(settings) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        running = client.run(seed="1")["taskid"]
        client.wait(running, statuses=("task_start",))
        holder = lock_database(settings)  # held while the run ends: its last writes fail
        try:
            time.sleep(1.5)
            headers = client.headers()
            refused = httpx.post(f"{live.base_url}/v1/Run/{SLUG}", json={"prompt": "a fox"}, headers=headers,
                                 timeout=10)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json() == {"result": False, "errors": [
                {"code": 0, "message": "The service's database is unavailable right now (locked or unreachable): "
                                       "retry shortly."}]}
            assert client.detail(running)["status"] != "task_postprocess_end"  # reads go on (WAL)
        finally:
            holder.rollback()
            holder.close()
        accepted = httpx.post(f"{live.base_url}/v1/Run/{SLUG}", json={"prompt": "a fox"}, headers=headers,
                              timeout=10).json()  # the same nonce: the refused request spent nothing
        assert accepted["result"] is True
        for taskid in (running, accepted["taskid"]):
            assert client.wait(taskid, timeout=60)["pexit"] == "0"
        record = live.service.tasks.get(int(running))
        assert (record.attempts, len(record.outputs)) == (1, 1)  # handed back, then run again once
        assert f"tasks [{running}] could not be taken to their end; queueing them again" in caplog.text
        assert len(stored_files(settings.files_dir)) == 2


def test_a_postgresql_row_locked_elsewhere_answers_503_within_the_database_timeout(make_settings):
    """A transaction left open on a task's row (a session by hand, a stuck job) holds every write to
    that row: the request waits the database timeout, as it would for a locked SQLite file, and is
    answered 503; once the lock goes, the same request is answered."""
    settings = make_settings(engine="bench", worker_concurrency=0, database_timeout_seconds=1.0)
    if settings.resolved_database_url.startswith("sqlite"):
        pytest.skip("the lock taken here is PostgreSQL's (SQLite's: the test above)")
    with LiveServer(settings) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        taskid = client.run()["taskid"]
        holder = Database(settings.resolved_database_url)
        with holder.engine.connect() as connection, connection.begin() as transaction:
            connection.execute(select(tasks.c.id).where(tasks.c.id == int(taskid)).with_for_update())
            began = time.monotonic()
            refused = client.post("Task/Cancel", {"taskid": taskid}, timeout=10)
            waited = time.monotonic() - began
            transaction.rollback()
        holder.dispose()
        assert refused.status_code == 503 and 1.0 <= waited < 5, (refused.status_code, waited)
        assert refused.json()["errors"][0]["message"].startswith("The service's database is unavailable right now")
        assert client.call("Task/Cancel", {"taskid": taskid})["tasklist"][0]["status"] == "task_cancel"


def test_a_run_whose_task_cannot_be_stored_spends_no_nonce(make_settings, monkeypatch):
    """The nonce and the task row commit together: when the row fails after the nonce was
    written, neither is kept, and the very same request may be sent again."""
    from sqlalchemy.exc import OperationalError

    with LiveServer(make_settings(engine="bench", worker_concurrency=0)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        headers = client.headers()
        create = live.service.tasks.create

        def written_then_failed(*args, **kwargs):
            create(*args, **kwargs)  # the row is written inside the Run's transaction, then the disk fails
            raise OperationalError("INSERT INTO tasks", {}, Exception("disk I/O error"))

        monkeypatch.setattr(live.service.tasks, "create", written_then_failed)
        refused = httpx.post(f"{live.base_url}/v1/Run/{SLUG}", json={"prompt": "a fox"}, headers=headers, timeout=10)
        assert refused.status_code == 503
        assert live.service.tasks.get(1) is None
        monkeypatch.undo()
        accepted = httpx.post(f"{live.base_url}/v1/Run/{SLUG}", json={"prompt": "a fox"}, headers=headers,
                              timeout=10).json()
        assert accepted["result"] is True, accepted["errors"]
        assert live.service.tasks.get(int(accepted["taskid"])).status == Status.QUEUE


def test_files_a_dead_run_left_are_cleared_by_the_next_run(make_settings):
    """A worker killed between writing its images and recording them leaves files no task names.
    Each claim gives its run a new folder and keeps the one before: the next run clears that."""
    settings = make_settings(engine="bench", steps=2, worker_concurrency=0)
    service = Service(settings)
    try:
        key = service.keys.create(KeyMode.KEY_ONLY)
        caller = service.operations.caller(key.api_key, None, None)
        task = service.operations.run(caller, service.operations.tool(*SLUG.split("/")), RunRequest(prompt="a fox"))
        worker = service.runtime.make_workers()[0]
        died = worker.claim()[0]
        for name in ("0.png", "1.png"):  # what the run wrote before its process was killed
            service.files.save(died.files_folder, name, b"left by a run that died")
        assert service.work.recover(3, dead_workers={worker.worker_id}).requeued == [(task.id, SLUG)]

        again = worker.claim()
        assert again[0].previous_files_folder == died.files_folder != again[0].files_folder
        worker.run(again)
        record = service.tasks.get(task.id)
        assert [(output.folder, output.name) for output in record.outputs] == [(again[0].files_folder, "0.png")]
        assert [path.name for path in stored_files(settings.files_dir)] == ["0.png"]
    finally:
        service.stop()


def test_a_run_that_lost_its_claim_can_neither_finish_nor_fail_the_task(make_settings):
    """A worker whose lease ran out while it still ran: another took the task over, and the first
    one's last writes must not end the task nor touch the new run's files."""
    service = Service(make_settings(engine="bench", worker_concurrency=0))
    try:
        key = service.keys.create(KeyMode.KEY_ONLY)
        caller = service.operations.caller(key.api_key, None, None)
        task = service.operations.run(caller, service.operations.tool(*SLUG.split("/")), RunRequest(prompt="a fox"))
        stale = service.work.claim_next("worker-a", [SLUG], lease_seconds=60)
        service.work.recover(3, dead_workers={"worker-a"})
        current = service.work.claim_next("worker-b", [SLUG], lease_seconds=60)
        assert current.files_folder != stale.files_folder
        stages = (Status.PREPROCESS_START, Status.PREPROCESS_END, Status.ASSIGN, Status.START)
        assert not service.work.advance(task.id, "worker-a", *stages)  # no longer worker-a's to move on
        assert service.work.advance(task.id, "worker-b", *stages)
        assert not service.work.finish(task.id, "worker-a", [], "", time.time())
        assert not service.work.fail(task.id, "late", worker_id="worker-a")
        assert service.work.finish(task.id, "worker-b", [], "", time.time())
    finally:
        service.stop()


def test_a_database_server_that_never_answers_fails_within_the_timeout():
    """A PostgreSQL server that takes the connection and never answers (here a loopback socket
    that only listens) fails the request once ``database_timeout_seconds`` has passed; libpq's
    own default would wait for ever, holding one of the API's database threads."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        db = Database(f"postgresql+psycopg://fluxhost@127.0.0.1:{silent.getsockname()[1]}/fluxhost", timeout_seconds=2)
        began = time.monotonic()
        with pytest.raises(OperationalError, match="timeout"):
            db.ping()
        assert time.monotonic() - began < 10
        db.dispose()
