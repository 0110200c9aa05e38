"""Blocking work run off the event loop: database work on a small bounded set of threads, and
work that waits on the outside world (DNS, file reads) on a larger one, so it never holds up the
database work.

Small on purpose: SQLite takes one writer at a time and Python runs one thread at a time, so
with SQLite a second thread helps (it runs while the first waits on SQLite or for the interpreter
lock) and more add only contention; when the worker runs in the API's process, any thread past the
first takes its share of the interpreter from the generations (see
:attr:`~fluxhost.settings.Settings.resolved_api_threads`). With PostgreSQL, queries wait on the
network and more threads help.

The database threads are a :class:`~concurrent.futures.ThreadPoolExecutor` the loop hands work
to, not anyio's worker threads: every request hands its work over, and under load anyio's
hand-over cost about 70 us of CPU against the executor's 16 (32 hand-overs in flight, this
project's 2-core VM).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class Offload:
    def __init__(self, database_threads: int):
        self.database_threads = database_threads
        self._database: ThreadPoolExecutor | None = None

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)``, database work, on one of the database threads, in the caller's
        context (its trace span); the loop serves others meanwhile."""
        if self._database is None:  # made on first use: an app may be started again after close()
            self._database = ThreadPoolExecutor(self.database_threads, thread_name_prefix="fluxhost-database")
        call = functools.partial(contextvars.copy_context().run, function, *args)
        return await asyncio.get_running_loop().run_in_executor(self._database, call)

    def close(self) -> None:
        """End the database threads once the work handed to them is done (the app's shutdown)."""
        if self._database is not None:
            self._database.shutdown()
            self._database = None

    async def run_waiting(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)``, which may wait on the outside world (a DNS answer, a disk or an
        object store), on anyio's shared threads."""
        return await anyio.to_thread.run_sync(function, *args)
