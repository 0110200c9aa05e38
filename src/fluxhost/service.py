"""The running service: settings turned into a store, keys, storage, events, engines and workers.

The API and the CLI receive a :class:`Service`; nothing here knows about HTTP.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Any

from fluxhost.auth import KeyStore
from fluxhost.callbacks import Allowlist, CallbackSender
from fluxhost.db import Database
from fluxhost.dispatch import Dispatcher, LocalDispatcher
from fluxhost.events import LocalEventBus
from fluxhost.settings import Settings
from fluxhost.storage import LocalStorage
from fluxhost.store import TaskRecord, TaskStore
from fluxhost.tools import Catalog, Tool
from fluxhost.wire import render_task, task_list_body
from fluxhost.worker import ServedModel, Worker

log = logging.getLogger("fluxhost")

JANITOR_SECONDS = 30.0


def worker_may_be_alive(worker_id: str) -> bool:
    """Whether the process behind a worker id (``host-pid-random``) may still be running. Only a
    process of this host can be known dead; another host's tasks come back when their lease ends."""
    parts = worker_id.rsplit("-", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url)
        self.db.migrate()
        self.store = TaskStore(self.db)
        self.keys = KeyStore(self.db, settings.nonce_window_seconds, settings.nonce_retention_seconds)
        self.storage = LocalStorage(settings.files_dir, settings.resolved_public_url)
        self.events = LocalEventBus()
        self.catalog = Catalog(
            [Tool(*slug.split("/", 1), model.description) for slug, model in settings.models.items()]
        )
        self.callback_allowlist = Allowlist.parse(settings.callback_allowlist)
        self.callbacks = CallbackSender(
            self.db, self.store, self.events, lambda record: task_list_body([self.render(record)]),
            self.callback_allowlist, settings.callback_max_attempts, settings.callback_backoff_seconds,
            settings.callback_timeout_seconds,
        )
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.dispatcher: Dispatcher = LocalDispatcher(self._make_worker, settings.worker_concurrency)
        self._stopping = threading.Event()
        self._janitor: threading.Thread | None = None

    def start(self) -> None:
        """Take back what a crash left, then start the workers and the janitor."""
        dead = {worker for worker in self.store.claiming_workers() if not worker_may_be_alive(worker)}
        recovery = self.store.recover(self.settings.max_attempts, dead_workers=dead)
        if recovery.requeued or recovery.failed:
            log.warning("recovered unfinished tasks: requeued %s, failed %s", recovery.requeued, recovery.failed)
        self.dispatcher.start()
        self.callbacks.start()
        self._janitor = threading.Thread(target=self._janitor_loop, name="fluxhost-janitor", daemon=True)
        self._janitor.start()

    def stop(self) -> None:
        self._stopping.set()
        self.dispatcher.stop()
        self.callbacks.stop()
        self.db.dispose()

    def render(self, record: TaskRecord) -> dict[str, Any]:
        """A task as Task/Detail, Task/List and callbacks show it."""
        tool = self.catalog.find(*record.row.model_slug.split("/", 1))
        return render_task(record, self.storage, tool.description if tool else "")

    def _make_worker(self) -> Worker:
        from fluxhost.engines import build_engine

        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        models = {}
        for slug, model in self.settings.models.items():
            try:
                engine = build_engine(model, self.settings)
                engine.load()
            except Exception as error:  # its tasks fail with this reason; other models still serve
                log.exception("model %s could not be loaded", slug)
                models[slug] = ServedModel(slug, model, None, f"{type(error).__name__}: {error}")
                continue
            log.warning("SERVING %s with %s", slug, engine.description)
            models[slug] = ServedModel(slug, model, engine)
        return Worker(self.worker_id, self.store, models, self.storage, self.events, self.settings.lease_seconds,
                      previews=self.settings.previews)

    def _janitor_loop(self) -> None:
        while not self._stopping.wait(JANITOR_SECONDS):
            try:
                # Our own tasks are running here whatever their lease says (one step can outlast it).
                recovery = self.store.recover(self.settings.max_attempts, alive_worker=self.worker_id)
                if recovery.requeued:
                    self.dispatcher.notify()
                self.keys.purge_nonces()
            except Exception:
                log.exception("janitor pass failed")
