"""The database engine, with reads and writes told apart, and its migrations."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: one process's writers still take turns on a threading lock
    fcntl = None

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text, update
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import sessionmaker

from fluxhost.store.schema import Heartbeat

MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"
# Processes of a fleet start together and each migrates: on PostgreSQL they take turns on this lock.
_MIGRATION_LOCK = 0x666C7578  # "flux"


# What SQLAlchemy raises when the database is locked past the timeout, unreachable, or its pool
# empty: a passing fault, after which the same work may be tried again.
DATABASE_FAULTS = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)

_BEAT = update(Heartbeat).where(Heartbeat.id == 1)

# A pooled connection used this recently is taken to be alive; one idle for longer is pinged first.
IDLE_PING_SECONDS = 5.0


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _sqlite_pragmas(busy_seconds: float) -> Callable[[Any, Any], None]:
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # SQLite's own lower() folds ASCII letters only: a search for "été" missed "ÉTÉ" (PostgreSQL's folds all)
        dbapi_connection.create_function("lower", 1, _lower, deterministic=True)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return set_pragmas


def _postgresql_lock_timeout(seconds: float) -> Callable[[Any, Any], None]:
    """A connect hook: the new connection's statements wait at most ``seconds`` for a lock another
    transaction holds. A ``SET`` after connecting rather than libpq's ``options``, which would
    replace ``PGOPTIONS`` and which PgBouncer refuses."""

    def set_lock_timeout(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {math.ceil(seconds * 1000)}")
        dbapi_connection.commit()

    return set_lock_timeout


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(engine: Engine) -> Callable[[Any, Any, Any], None]:
    """A checkout hook that pings a pooled connection only when it sat idle: a server restart is
    still caught before a request meets a dead connection, without the round trip per checkout
    that ``pool_pre_ping`` costs (several per task on a worker). A restart within the last few
    seconds shows as one failed statement, after which SQLAlchemy renews the whole pool."""

    def ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("checked_in", 0.0) < IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise DisconnectionError(str(error)) from error
        if not alive:
            raise DisconnectionError("the pooled connection no longer answers")

    return ping


class _WriterTurns:
    """Writers to one SQLite file take turns on a lock file next to it (``flock``), which hands
    over in microseconds where SQLite's busy handler sleeps for milliseconds: the API and a child
    worker process write often. A process's own threads also take turns on a threading lock,
    since ``flock`` does not tell them apart."""

    def __init__(self, database_path: Path):
        self._threads = threading.Lock()
        self._file = (database_path.parent / f"{database_path.name}.lock").open("a+b")

    def __enter__(self) -> None:
        self._threads.acquire()
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._threads.release()

    def close(self) -> None:
        self._file.close()


class Database:
    """The engine, with reads and writes told apart.

    SQLite takes one writer at a time, and a connection that finds the write lock taken sleeps in
    SQLite's busy handler (1, 2, 5, 10... ms). Writers therefore queue on a lock of ours instead,
    which hands over in microseconds: a Python lock, and a lock file shared with other processes
    where the platform has ``flock``; anything else still meets the busy timeout.
    """

    def __init__(self, url: str, timeout_seconds: float = 30.0):
        """``timeout_seconds``: how long a statement waits for a locked SQLite file, or on
        PostgreSQL for a lock another transaction holds (unless the URL's ``options`` or
        ``PGOPTIONS`` set ``lock_timeout``), a connection from a full pool or a new one from the
        server (whole seconds, 2 at least, unless the URL sets ``connect_timeout``), before it
        fails."""
        self.is_sqlite = url.startswith("sqlite")
        self._turns: _WriterTurns | None = None
        if self.is_sqlite:
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                if fcntl is not None:
                    self._turns = _WriterTurns(Path(path))
            self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout_seconds})
            event.listen(self.engine, "connect", _sqlite_pragmas(timeout_seconds))
        else:
            # libpq's default waits for ever on a server that takes the connection and never answers,
            # and PostgreSQL's on a row another transaction holds (one left open by hand, a stuck job)
            query = make_url(url).query
            connecting = {} if "connect_timeout" in query else {"connect_timeout": max(2, math.ceil(timeout_seconds))}
            self.engine = create_engine(url, pool_size=10, max_overflow=20, pool_timeout=timeout_seconds,
                                        connect_args=connecting)
            event.listen(self.engine, "checkout", _ping_if_idle(self.engine))
            if "lock_timeout" not in f"{query.get('options', '')} {os.environ.get('PGOPTIONS', '')}":
                event.listen(self.engine, "connect", _postgresql_lock_timeout(timeout_seconds))
            event.listen(self.engine, "checkin", _note_checkin)
        self._write_lock = self._turns or (threading.Lock() if self.is_sqlite else nullcontext())
        self._open_write = threading.local()  # this thread's write transaction, while one is open

    def read(self) -> AbstractContextManager[Connection]:
        return self.engine.connect()

    def ping(self) -> None:
        """One round trip to the database; raises when it cannot be reached."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def heartbeat(self) -> None:
        """One small committed write (the heartbeat row's time); raises when the database takes no
        writes. A read, or a write rolled back, would pass on a full disk or a read-only database,
        where every Run fails."""
        with self.write() as connection:
            connection.execute(_BEAT, {"beat_at": time.time()})

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that commits on success and rolls back on error. Inside another write on
        the same thread it joins that one: both commit, or neither, with one commit and one turn
        of the writers' lock. A statement that fails inside a joined write fails the whole of it
        (PostgreSQL aborts the transaction), so the inner write's error must end the outer."""
        joined = getattr(self._open_write, "connection", None)
        if joined is not None:
            yield joined
            return
        with self._write_lock, self.engine.begin() as connection:
            self._open_write.connection = connection
            try:
                yield connection
            finally:
                self._open_write.connection = None

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent; safe at every start)."""
        config = alembic_config(self.engine.url.render_as_string(hide_password=False))
        with self._write_lock, self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":  # a long migration by another process is waited for
                connection.execute(text("SET LOCAL lock_timeout = 0"))
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()
        if self._turns is not None:
            self._turns.close()


def make_sessionmaker(db: Database) -> sessionmaker:
    return sessionmaker(db.engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
