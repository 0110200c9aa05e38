"""Faults under load, then a count: every accepted task must reach a terminal state exactly once,
with one output file per image and no file that no task names. Exits 1 on any loss.

A `fluxhost serve` (bench engine, the worker in its child process, SQLite, local files) takes Runs
from a few client threads the whole time, while the script, one fault after another:

1. SIGKILLs the service and starts it again;
2. SIGTERMs it (graceful: tasks past the grace period are queued again) and starts it again;
3. SIGKILLs the worker process mid-task (the service starts another);
4. puts a file where the output folder was for a few seconds (every write there fails);
5. holds SQLite's write lock from another connection for several seconds (past the service's
   database timeout: requests answer 503, runs whose last writes fail are queued again).

Three Runs in four ask for a callback, in turn to a receiver that answers at once, one that
answers 200 and then drips its body a byte at a time, and one that never finishes its headers.

Then it waits for every accepted task to end and reads the database and the files folder:
completed tasks have exactly one output each and the file is there; failed ones say why; no task
is still queued or running; no file lies outside a task's outputs or inputs. It waits for every
callback to be settled and counts what each receiver got: a callback POSTed again after a 2xx
answer is a duplicate, a callback owed but never settled is lost (POSTs cut short by the SIGKILL
are counted apart: the service could not record them, so it makes them again). Loopback only, bounded in time
(two to three minutes).

    python bench/faults.py [--clients 4] [--phase-seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from _server import FLUXHOST, SLUG, Signer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: its test helpers
from tests.helpers import DrippingReceiver, Receiver, ServiceProcess, wait_until_ready  # noqa: E402

from fluxhost.statuses import TERMINAL, Outcome
from fluxhost.store.database import Database
from fluxhost.store.deliveries import Deliveries
from fluxhost.store.tasks import TaskStore

STEP_MS = 20
STEPS = 10  # 0.2 s of engine time a task
GRACE_SECONDS = 0.5
CALLBACK_TIMEOUT_SECONDS = 2


class Service:
    """`fluxhost serve` on a data folder, started and stopped at will."""

    def __init__(self, data_dir: Path, port: int):
        self.env = {"FLUXHOST_DATA_DIR": str(data_dir), "FLUXHOST_PORT": str(port),
                    "FLUXHOST_ENGINE": "bench", "FLUXHOST_BENCH_STEP_MS": str(STEP_MS),
                    "FLUXHOST_MODELS": json.dumps({SLUG: {"steps": STEPS, "max_batch": 1}}),
                    "FLUXHOST_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS), "FLUXHOST_LOG_LEVEL": "WARNING",
                    "FLUXHOST_DATABASE_TIMEOUT_SECONDS": "1", "FLUXHOST_RATE_LIMIT_PER_MINUTE": "0",
                    "FLUXHOST_CALLBACK_ALLOWLIST": "127.0.0.1", "FLUXHOST_CALLBACK_MAX_ATTEMPTS": "3",
                    "FLUXHOST_CALLBACK_BACKOFF_SECONDS": "0.5",
                    "FLUXHOST_CALLBACK_TIMEOUT_SECONDS": str(CALLBACK_TIMEOUT_SECONDS)}
        self.base_url = f"http://127.0.0.1:{port}"
        self.serving: ServiceProcess | None = None

    def key(self) -> dict:
        created = subprocess.run([FLUXHOST, "keys", "create", "--json"], env={**os.environ, **self.env}, check=True,
                                 capture_output=True, text=True)
        return json.loads(created.stdout)

    def start(self) -> None:
        self.serving = ServiceProcess(["serve"], self.env)
        wait_until_ready(self.base_url, self.serving, timeout=120)

    @property
    def process(self) -> subprocess.Popen:
        return self.serving.process

    def signal(self, number: int) -> int:
        self.process.send_signal(number)
        return self.process.wait(60)

    def worker_pid(self) -> int | None:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        for pid in pids:  # the spawned worker, not multiprocessing's resource tracker
            if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                return int(pid)
        return None


class Load:
    """Client threads sending Runs back to back; what was accepted, and what was refused how."""

    def __init__(self, base_url: str, key: dict, clients: int, callback_urls: list[str]):
        self.base_url = base_url
        self.callback_urls = ["", *callback_urls]  # Runs name each in turn
        self.signer = Signer(key)
        self.accepted: list[int] = []
        self.refused: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(30)

    def _client(self) -> None:
        """Run, then poll the task until it ends (as clients do: the load stays what the worker can
        take), riding out refusals and lost connections."""
        with httpx.Client(base_url=f"{self.base_url}/v1", timeout=10) as http:
            seed = 0
            while not self._stopping.is_set():
                seed += 1
                answer = self._post(http, f"/Run/{SLUG}", {"prompt": "fault", "seed": str(seed), "callbackUrl":
                                                          self.callback_urls[seed % len(self.callback_urls)]})
                if answer is None:
                    continue
                self.accepted.append(int(answer["taskid"]))
                while not self._stopping.is_set():
                    detail = self._post(http, "/Task/Detail", {"tasktoken": answer["socketaccesstoken"]})
                    if detail is not None and detail["tasklist"][0]["status"] in TERMINAL:
                        break
                    time.sleep(0.05)

    def _post(self, http: httpx.Client, path: str, body: dict) -> dict | None:
        """The answer when accepted; None (counted, after a pause) when refused or unreachable."""
        try:
            answer = http.post(path, json=body, headers=self.signer.headers())
        except httpx.TransportError:
            self.refused["no connection"] += 1
            time.sleep(0.1)
            return None
        if answer.status_code == 200 and answer.json()["result"]:
            return answer.json()
        self.refused[f"HTTP {answer.status_code}: {answer.json()['errors'][0]['message'][:50]}"] += 1
        time.sleep(0.1)
        return None


def wait_until_all_end(tasks: TaskStore, ids: list[int], seconds: float) -> list[int]:
    """The ids still unfinished after waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        open_ids = [task_id for task_id in ids if (record := tasks.get(task_id)) is None or not record.ended]
        if not open_ids or time.monotonic() > deadline:
            return open_ids
        time.sleep(0.5)


def wait_until_settled(deliveries: Deliveries, seconds: float) -> list[dict]:
    """Every callback owed, once none is pending or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        owed = deliveries.list(limit=100_000)
        if all(delivery["status"] != "pending" for delivery in owed) or time.monotonic() > deadline:
            return owed
        time.sleep(0.5)


def count_callbacks(owed: list[dict], receivers: dict[str, Receiver | DrippingReceiver]) -> tuple[list[str], list[str]]:
    """A line per receiver: the callbacks owed to it, how they ended, the attempts each took, the
    POSTs it got; duplicates (POSTs of a delivered callback beyond the attempts recorded, which
    ended with its 2xx), and attempts cut short (POSTs of an undelivered one beyond those recorded:
    the service was killed mid-POST, so it tries again). The problems: callbacks never settled,
    and duplicates."""
    lines, problems = [], []
    for name, receiver in receivers.items():
        mine = [delivery for delivery in owed if delivery["url"] == receiver.url]
        posts = Counter(request["headers"]["webhook-id"] for request in receiver.requests)
        beyond = {delivery["id"]: max(0, posts[f"msg_{delivery['id']}"] - len(delivery["history"]))
                  for delivery in mine}
        duplicates = sum(beyond[d["id"]] for d in mine if d["status"] == "delivered")
        lines.append(f"  {name}: {len(mine)} owed, {dict(Counter(d['status'] for d in mine))}, attempts each "
                     f"{dict(sorted(Counter(len(d['history']) for d in mine).items()))}, {sum(posts.values())} POSTs, "
                     f"duplicates {duplicates}, attempts cut short by a kill {sum(beyond.values()) - duplicates}")
        problems += [f"{name}: the callback of task {d['task_id']} never settled"
                     for d in mine if d["status"] == "pending"]
        if duplicates:
            problems.append(f"{name}: {duplicates} delivered callbacks POSTed again")
    return lines, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--phase-seconds", type=float, default=4.0)
    parser.add_argument("--port", type=int, default=8797)
    args = parser.parse_args()
    pause = args.phase_seconds

    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        service = Service(data, args.port)
        key = service.key()
        service.start()
        faults: list[str] = []
        with Receiver() as prompt, DrippingReceiver("body", 0.5) as dripping, \
                DrippingReceiver("headers", 0.5) as stalling:
            with Load(service.base_url, key, args.clients, [prompt.url, dripping.url, stalling.url]) as load:
                time.sleep(pause)
                service.signal(signal.SIGKILL)
                service.start()
                faults.append("SIGKILL of the service, restarted")
                time.sleep(pause)
                code = service.signal(signal.SIGTERM)
                faults.append(f"SIGTERM of the service (exit status {code}), restarted")
                service.start()
                time.sleep(pause)
                worker = service.worker_pid()
                if worker:
                    os.kill(worker, signal.SIGKILL)
                    faults.append(f"SIGKILL of the worker process {worker}")
                time.sleep(pause)
                files = data / "files"
                files.rename(data / "files-away")
                files.write_bytes(b"")
                time.sleep(pause / 2)
                files.unlink()
                (data / "files-away").rename(files)
                faults.append(f"output folder unwritable for {pause / 2:.0f} s")
                time.sleep(pause)
                holder = sqlite3.connect(data / "fluxhost.db", isolation_level=None)
                holder.execute("BEGIN EXCLUSIVE")
                time.sleep(pause)
                holder.rollback()
                holder.close()
                faults.append(f"database write-locked for {pause:.0f} s")
                time.sleep(pause)

            database = Database(f"sqlite:///{data / 'fluxhost.db'}")
            tasks = TaskStore(database)
            accepted = sorted(load.accepted)
            unfinished = wait_until_all_end(tasks, accepted, 120)
            owed = wait_until_settled(Deliveries(database), 120)
            callbacks, callback_problems = count_callbacks(
                owed, {"prompt receiver": prompt, "receiver dripping its body": dripping,
                       "receiver never finishing its headers": stalling})
            service.signal(signal.SIGTERM)

        outcomes: Counter[str] = Counter()
        problems: list[str] = []
        named: set[Path] = set()
        attempts: Counter[int] = Counter()
        for task_id in accepted:
            record = tasks.get(task_id)
            if record is None:
                problems.append(f"task {task_id} was accepted but is not in the database")
                continue
            attempts[record.attempts] += 1
            if task_id in unfinished:
                problems.append(f"task {task_id} never ended ({record.status})")
            elif record.outcome is Outcome.COMPLETED:
                outcomes["completed"] += 1
                if len(record.outputs) != 1:
                    problems.append(f"task {task_id} completed with {len(record.outputs)} outputs")
            elif record.status in {status.value for status in TERMINAL}:
                outcomes[f"failed: {record.debug_error.split(' (')[0][:60]}"] += 1
                if record.outputs:
                    problems.append(f"task {task_id} failed but has outputs")
                if not record.debug_error:
                    problems.append(f"task {task_id} failed without a reason")
            for output in record.outputs:
                path = data / "files" / output.folder[:2] / output.folder / output.name
                named.add(path)
                if not path.is_file():
                    problems.append(f"task {task_id}: its output {output.name} is missing")
        stray = sorted(path for path in (data / "files").rglob("*") if path.is_file() and path not in named)
        problems += [f"orphan file {path.relative_to(data)}" for path in stray]

        print("faults:")
        for fault in faults:
            print(f"  {fault}")
        print(f"Runs accepted: {len(accepted)}; refused while faulty: {dict(load.refused)}")
        for outcome, count in sorted(outcomes.items()):
            print(f"  {outcome}: {count}")
        print(f"runs per task: {dict(sorted(attempts.items()))}")
        print("callbacks:")
        for line in callbacks:
            print(line)
        problems += callback_problems
        if problems:
            print(f"LOST OR DOUBLED ({len(problems)}):")
            for problem in problems[:50]:
                print(f"  {problem}")
            return 1
        print("every accepted task ended exactly once; one file per output, no orphan files; "
              "every callback settled, none POSTed again once delivered")
        return 0


if __name__ == "__main__":
    sys.exit(main())
