"""Blocking work run off the event loop: database work on a small bounded set of threads, and
work that waits on the outside world (DNS, file reads) on a larger one, so it never holds up the
database work.

Small on purpose: SQLite takes one writer at a time and Python runs one thread at a time, so
with SQLite a second thread helps (it runs while the first waits on SQLite or for the interpreter
lock) and more add only contention; when the worker runs in the API's process, any thread past the
first takes its share of the interpreter from the generations (see
:attr:`~fluxhost.settings.Settings.resolved_api_threads`). With PostgreSQL, queries wait on the
network and more threads help.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class Offload:
    def __init__(self, database_threads: int):
        self.database_threads = database_threads
        self._database: anyio.CapacityLimiter | None = None

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)``, database work, on one of the database threads; the loop serves
        others meanwhile."""
        if self._database is None:  # made on first use: it belongs to the running loop
            self._database = anyio.CapacityLimiter(self.database_threads)
        return await anyio.to_thread.run_sync(function, *args, limiter=self._database)

    async def run_waiting(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)``, which may wait on the outside world (a DNS answer, a disk or an
        object store), on anyio's shared threads."""
        return await anyio.to_thread.run_sync(function, *args)
