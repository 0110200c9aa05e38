"""The leases of the tasks a worker runs, kept from running out while it runs them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from fluxhost.store.database import DATABASE_FAULTS
from fluxhost.store.work import WorkStore

log = logging.getLogger(__name__)


class Leases:
    """Renews the lease of every task a worker holds, every quarter of a lease, from a thread of
    its own. A task's run can go longer than a lease without a step: waiting for the device,
    loading the weights or an adapter, upsampling its prompt, checking and storing its pictures,
    a training's samples. A task whose lease ran out is another worker's to take up: it would run
    twice. A renewal that finds the task no longer ours (killed, or taken over) marks it lost,
    which its run asks at each step; one the database refuses is tried again at the next beat."""

    def __init__(self, store: WorkStore, worker_id: str, lease_seconds: float):
        self._store = store
        self._worker_id = worker_id
        self._lease_seconds = lease_seconds
        self._held: set[int] = set()
        self._lost: set[int] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, task_ids: Collection[int]) -> Iterator[None]:
        """Keep the leases of ``task_ids`` (just claimed: their leases are whole) while inside."""
        with self._lock:
            self._held.update(task_ids)
            if self._thread is None:
                self._thread = threading.Thread(target=self._keep, name=f"fluxhost-leases-{self._worker_id}",
                                                daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.difference_update(task_ids)
                self._lost.difference_update(task_ids)

    def lost(self, task_id: int) -> bool:
        """Whether a renewal found task ``task_id`` no longer ours."""
        return task_id in self._lost

    def renew(self) -> None:
        """One beat: the lease of each task held and not lost, renewed."""
        with self._lock:
            held = sorted(self._held - self._lost)
        for task_id in held:
            try:
                renewed = self._store.renew_lease(task_id, self._worker_id, self._lease_seconds)
            except DATABASE_FAULTS as error:
                log.warning("leases could not be renewed; trying again at the next beat: %s", type(error).__name__)
                return
            if not renewed:
                with self._lock:
                    if task_id in self._held:
                        self._lost.add(task_id)

    def stop(self) -> None:
        """No more renewals (the worker is halting: its tasks are to be taken up again)."""
        self._stopping.set()

    def _keep(self) -> None:
        """Beat until stopped, whatever a beat meets: a thread that ended would leave every later
        task of the worker unrenewed, for another host to run again."""
        while not self._stopping.wait(self._lease_seconds / 4):
            try:
                self.renew()
            except Exception:
                log.exception("leases could not be renewed; trying again at the next beat")
