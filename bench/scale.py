"""Completed tasks per second as workers are added: the embedded default (one `fluxhost serve`,
SQLite, N worker threads) versus the distributed path (a `fluxhost serve` API on PostgreSQL with
a Redis broker, N `fluxhost worker` processes), with the bench engine at 0 and 50 ms per task.

For each setup a batch of tasks is queued through the API before the workers start, and the
database says when each was claimed and ended: the rate is tasks over the time from the first
claim to the last end, and the per-task overhead is one worker's seconds per task less the
engine's. Prints a table.

Needs PostgreSQL and Redis (what `.ci/services start` prints):

    eval "$(.ci/services start)"
    python bench/scale.py --postgres "$FLUXHOST_CI_POSTGRES" --redis "$FLUXHOST_TEST_REDIS" [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from _server import SLUG, Signer, running_server
from fluxhost.statuses import TERMINAL, Outcome
from fluxhost.store.schema import tasks

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: its test helpers
from tests.helpers import ServiceProcess, fresh_postgres_database  # noqa: E402

ENGINE_MS = (0, 50)
REDIS_DATABASE = 8


async def submit(base_url: str, key: dict, count: int) -> None:
    signer = Signer(key)
    async with aiohttp.ClientSession(base_url) as http:
        async def one(index: int) -> None:
            async with http.post(f"/v1/Run/{SLUG}", json={"prompt": "scale", "seed": str(index)},
                                 headers=signer.headers()) as response:
                assert (await response.json())["result"] is True

        for start in range(0, count, 16):
            await asyncio.gather(*(one(index) for index in range(start, min(count, start + 16))))


def wait_and_time(database_url: str, count: int) -> tuple[float, int]:
    """Seconds from the first claim to the last end once all ``count`` tasks ended, and how many
    ended well."""
    engine = create_engine(database_url)
    try:
        deadline = time.monotonic() + 600
        with engine.connect() as connection:
            while True:
                ended = connection.execute(select(func.count()).where(
                    tasks.c.status.in_([status.value for status in TERMINAL]))).scalar()
                if ended >= count:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {ended} of {count} tasks ended")
                time.sleep(0.1)
                connection.commit()
            first, last, good = connection.execute(select(
                func.min(tasks.c.accept_time), func.max(tasks.c.postprocess_end_time),
                func.count().filter(tasks.c.outcome == Outcome.COMPLETED.value))).one()
        return last - first, good
    finally:
        engine.dispose()


def measure(setup: str, workers: int, engine_ms: int, count: int, port: int, postgres: str, broker: str) -> dict:
    """The tasks are all queued before any worker starts, so what is timed is the workers' pace,
    not how fast the API takes Runs."""
    with ExitStack() as stack:
        data = stack.enter_context(tempfile.TemporaryDirectory())
        settings = {"engine": "bench", "bench_step_ms": str(engine_ms), "data_dir": data,
                    "models": json.dumps({SLUG: {"steps": 1, "max_batch": 1}})}
        if setup == "embedded":
            settings["database_url"] = f"sqlite:///{data}/fluxhost.db"
            with running_server(port, worker_concurrency="0", **settings) as (base_url, key):
                asyncio.run(submit(base_url, key, count))
            stack.enter_context(running_server(port, worker_concurrency=str(workers), **settings))
        else:
            redis.Redis.from_url(broker).flushdb()
            database_url = stack.enter_context(fresh_postgres_database(postgres, "scale"))
            settings.update(database_url=database_url, broker_url=broker)
            base_url, key = stack.enter_context(running_server(port, **settings))
            asyncio.run(submit(base_url, key, count))
            env = {f"FLUXHOST_{name.upper()}": value for name, value in settings.items()}
            for worker in [ServiceProcess(["worker"], env) for _ in range(workers)]:
                stack.callback(worker.stop)
                worker.wait_for(" ready.")
        seconds, good = wait_and_time(settings["database_url"], count)
    if good != count:
        raise RuntimeError(f"{count - good} tasks failed")
    return {"setup": setup, "workers": workers, "engine_ms": engine_ms, "tasks": count, "rate": count / seconds,
            "per_task_ms": seconds / count * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", required=True, help="a PostgreSQL server's SQLAlchemy URL")
    parser.add_argument("--redis", required=True, help="a Redis server's URL")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--tasks", type=int, default=120, help="tasks per measurement at 0 ms (per worker at 50 ms: "
                        "a third of it)")
    parser.add_argument("--port", type=int, default=8797)
    args = parser.parse_args()
    broker = make_url(args.redis).set(database=str(REDIS_DATABASE)).render_as_string()
    rows = []
    for engine_ms in ENGINE_MS:
        for workers in (int(n) for n in args.workers.split(",")):
            count = args.tasks if engine_ms == 0 else args.tasks // 3 * workers
            for setup in ("embedded", "distributed"):
                row = measure(setup, workers, engine_ms, count, args.port, args.postgres, broker)
                rows.append(row)
                print(f"{setup:>11}  {workers} worker(s)  engine {engine_ms:>2} ms  {count:>4} tasks: "
                      f"{row['rate']:7.1f} tasks/s  ({row['per_task_ms']:6.1f} ms of wall time per task)", flush=True)
    print()
    for engine_ms in ENGINE_MS:
        one = {row["setup"]: row for row in rows if row["workers"] == 1 and row["engine_ms"] == engine_ms}
        if len(one) == 2:
            overhead = {setup: row["per_task_ms"] - engine_ms for setup, row in one.items()}
            print(f"engine {engine_ms} ms, 1 worker: overhead per task embedded {overhead['embedded']:.1f} ms, "
                  f"distributed {overhead['distributed']:.1f} ms "
                  f"(the distributed path adds {overhead['distributed'] - overhead['embedded']:+.1f} ms)")
        for setup in ("embedded", "distributed"):
            by_workers = {row["workers"]: row["rate"] for row in rows
                          if row["setup"] == setup and row["engine_ms"] == engine_ms}
            if 1 in by_workers and 2 in by_workers:
                print(f"engine {engine_ms} ms, {setup}: 2 workers complete {by_workers[2] / by_workers[1]:.2f}x "
                      f"the tasks of 1" + (f", 4 workers {by_workers[4] / by_workers[1]:.2f}x" if 4 in by_workers
                                           else ""))


if __name__ == "__main__":
    main()
