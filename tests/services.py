"""Throwaway PostgreSQL and Redis servers for the tests that need real ones, started from the
Debian packages' binaries on loopback under a temporary folder and removed afterwards, so `make
test` runs the same tests as CI wherever the packages are installed. PostgreSQL refuses to run as
root: as root its cluster belongs to the `postgres` user the Debian package creates."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

START_SECONDS = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen | None, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        exited = process is not None and process.poll() is not None
        if exited or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start on 127.0.0.1:{port}:\n{tail}")
        time.sleep(0.05)


def redis_binary() -> str | None:
    return shutil.which("redis-server")


class RedisProcess:
    """A redis-server on loopback with nothing saved to disk, in ``root``. Killed and started again,
    it comes back on the same port with nothing in it, as a Redis without persistence does after a
    crash."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = root / "redis.log"
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--logfile", str(self._log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for_port(self.port, self._process, self._log, "Redis")

    def kill(self) -> None:
        self._process.kill()
        self._process.wait()

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


@contextlib.contextmanager
def throwaway_redis() -> Iterator[RedisProcess]:
    """A started :class:`RedisProcess`, stopped and removed afterwards."""
    server = RedisProcess(Path(tempfile.mkdtemp(prefix="fluxhost-redis-")))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian keeps them out of PATH, one folder per
    major version)."""
    debian = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")
              if path.parent.parent.name.isdigit()]
    if debian:
        return max(debian, key=lambda programs: int(programs.parent.name))
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _as_cluster_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def postgres_usable() -> bool:
    """Programs found, and as root a `postgres` user to own the cluster."""
    if postgres_bin_dir() is None:
        return False
    if os.geteuid() != 0:
        return True
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return shutil.which("runuser") is not None


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster (trust authentication on loopback, fsync off); yields the SQLAlchemy URL
    of its `postgres` database, as superuser `postgres`."""
    programs = postgres_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="fluxhost-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log, port = root / "data", root / "log", _free_port()
    subprocess.run(_as_cluster_owner([str(programs / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                      "--no-sync"]), check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    started = subprocess.run(_as_cluster_owner([str(programs / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                                                "-o", options, "start"]), capture_output=True, text=True)
    try:
        if started.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n"
                               + (log.read_text(errors="replace")[-3000:] if log.exists() else ""))
        _wait_for_port(port, None, log, "PostgreSQL")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_cluster_owner([str(programs / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
