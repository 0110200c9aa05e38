"""The database engine, with reads and writes told apart, and its migrations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.orm import sessionmaker

MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"
# Processes of a fleet start together and each migrates: on PostgreSQL they take turns on this lock.
_MIGRATION_LOCK = 0x666C7578  # "flux"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """The engine, with reads and writes told apart.

    SQLite takes one writer at a time, and a connection that finds the write lock taken sleeps in
    SQLite's busy handler (1, 2, 5, 10... ms). Writers of one process therefore queue on a Python
    lock instead, which hands over in microseconds; other processes still meet the busy timeout.
    """

    def __init__(self, url: str):
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        self._write_lock = threading.Lock() if self.is_sqlite else nullcontext()

    def read(self) -> AbstractContextManager[Connection]:
        return self.engine.connect()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that commits on success and rolls back on error."""
        with self._write_lock, self.engine.begin() as connection:
            yield connection

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent; safe at every start)."""
        config = alembic_config(self.engine.url.render_as_string(hide_password=False))
        with self._write_lock, self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def make_sessionmaker(db: Database) -> sessionmaker:
    return sessionmaker(db.engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
