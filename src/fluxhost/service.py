"""The running service: settings turned into a store, keys, files, events, engines and workers,
wired together; its :attr:`Service.operations` are what every door calls.

The API and the CLI receive a :class:`Service`; nothing here knows about HTTP.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from prometheus_client import generate_latest

from fluxhost.auth import Authenticator
from fluxhost.callbacks.poster import WebhookPoster
from fluxhost.callbacks.sender import CallbackSender
from fluxhost.dispatch import Dispatcher, LocalDispatcher
from fluxhost.events import EventBus, LocalEventBus, RedisEventBus
from fluxhost.image_inputs import ImageLimits
from fluxhost.limits import TaskLimits, request_rate
from fluxhost.metrics import ApiMetrics, WorkerMetrics
from fluxhost.operations import Operations
from fluxhost.protocol_json import render_task, task_list_body
from fluxhost.safety.moderator import Moderator
from fluxhost.settings import Settings
from fluxhost.storage import FileStore, LocalFileStore
from fluxhost.store.database import Database
from fluxhost.store.deliveries import Deliveries
from fluxhost.store.keys import KeyStore
from fluxhost.store.tasks import TaskRecord, TaskStore
from fluxhost.store.work import WorkStore
from fluxhost.tools import Catalog
from fluxhost.upsampling import ChatCompletions, LocalLanguageModel, Upsampler
from fluxhost.urlguard import Allowlist
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
    def __init__(self, settings: Settings, worker_id: str | None = None):
        """``worker_id``: the id this process's workers claim tasks under; default: a new one
        (a child worker process takes its parent's)."""
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url, settings.database_timeout_seconds)
        self.db.migrate()
        self.tasks = TaskStore(self.db)
        self.work = WorkStore(self.db)
        self.keys = KeyStore(self.db)
        self.auth = Authenticator(self.db, settings.nonce_window_seconds, settings.nonce_retention_seconds)
        self.files = self._file_store()
        events_url = settings.resolved_events_url
        self.events: EventBus = RedisEventBus(events_url) if events_url else LocalEventBus()
        self.models = settings.served_models
        self.moderator = Moderator(
            settings.safety_terms_dir, text_model=settings.safety_text_model, image_model=settings.safety_image_model,
            image_backend=settings.safety_image_backend,
            unsafe_labels=frozenset(label.strip() for label in settings.safety_unsafe_labels.split(",") if label),
        )
        upsampling = bool(settings.upsampler_url or settings.upsampler_local)
        self.request_rate = request_rate(settings.rate_limit_per_minute, events_url)
        self.catalog = Catalog.from_models(self.models, max_prompt_chars=settings.max_prompt_chars, notes={
            "safetyTolerance": self.moderator.describe(),
            "promptUpsampling": "Available on this server." if upsampling else (
                "Not available on this server: Runs asking for it are refused."),
        })
        self.url_allowlist = Allowlist.parse(settings.callback_allowlist)
        self.metrics = ApiMetrics()
        self.metrics.watch_tasks(self.work.unfinished_by_status)
        self.worker_metrics = WorkerMetrics()
        self.deliveries = Deliveries(self.db)
        self.callbacks = CallbackSender(
            self.deliveries, self.tasks, self.events, self.callback_body,
            WebhookPoster(self.url_allowlist, settings.callback_timeout_seconds),
            settings.callback_max_attempts, settings.callback_backoff_seconds, self.metrics.callback_attempts,
        )
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.dispatcher: Dispatcher
        if settings.broker_url:
            from fluxhost.dispatch.celery import CeleryDispatcher

            self.dispatcher = CeleryDispatcher(settings.broker_url, settings.broker_visibility_seconds,
                                               settings.broker_transport_options)
        elif settings.worker_process:
            from fluxhost.dispatch.child import ChildProcessDispatcher

            self.dispatcher = ChildProcessDispatcher(settings, self.worker_id, self.events,
                                                     on_lost=lambda: self._recover(lost=self.worker_id))
        else:
            self.dispatcher = LocalDispatcher(self._make_workers, settings.worker_concurrency, self.worker_metrics)
        self.operations = Operations(self.tasks, self.files, self.events, self.dispatcher, self.catalog,
                                     self.url_allowlist, self.load_error, upsampling,
                                     ImageLimits(settings.input_max_bytes, settings.input_max_pixels,
                                                 settings.input_timeout_seconds),
                                     TaskLimits(settings.max_unfinished_tasks_per_key,
                                                settings.max_unfinished_tasks_per_project,
                                                settings.max_queued_tasks_per_model))
        self._stopping = threading.Event()
        self._janitor: threading.Thread | None = None

    def start(self) -> None:
        """Take back what a crash left, then start the workers, the callbacks and the janitor."""
        self._recover()
        self.dispatcher.start()
        self.callbacks.start()
        self._start_janitor()

    def run_worker(self, slugs: list[str] | None = None, device: str | None = None) -> None:
        """Be a Celery worker process (``fluxhost worker``) until told to stop: load the models
        (``slugs``, default all) once on ``device`` (default the first configured), then run the
        tasks their queues bring."""
        from fluxhost.dispatch.celery import CeleryDispatcher, consume

        if not isinstance(self.dispatcher, CeleryDispatcher):
            raise RuntimeError("a worker process takes its tasks from a broker: set FLUXHOST_BROKER_URL")
        unknown = sorted(set(slugs or ()) - set(self.models))
        if unknown:
            raise ValueError(f"not a model of this server: {', '.join(unknown)} (served: {', '.join(self.models)})")
        worker = self._make_workers([device or self.settings.device_list[0]], slugs)[0]
        self._recover()
        self.dispatcher.start()
        self._start_janitor()
        try:
            consume(self.dispatcher.app, worker, self.settings.log_level)
        finally:
            self.stop()

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop taking tasks, give the running ones ``grace_seconds`` (default: the setting) to
        finish, queue again what is left, then close."""
        self._stopping.set()
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self.dispatcher.stop(grace)
        if not self.settings.broker_url:  # this process ran the tasks it holds (Celery redelivers its own)
            self._release_unfinished()
        self.callbacks.stop()
        if isinstance(self.events, RedisEventBus):
            self.events.close()
        self.db.dispose()

    def _file_store(self) -> FileStore:
        settings = self.settings
        if settings.storage == "local":
            return LocalFileStore(settings.files_dir, settings.resolved_public_url)
        from fluxhost.storage.s3 import S3FileStore

        secret = settings.s3_secret_access_key
        return S3FileStore(
            settings.s3_bucket, endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url, region=settings.s3_region,
            access_key_id=settings.s3_access_key_id, secret_access_key=secret.get_secret_value() if secret else None,
            prefix=settings.s3_prefix, url_mode=settings.s3_url_mode, public_url=settings.s3_public_url,
            url_seconds=settings.s3_url_seconds, path_style=settings.s3_path_style,
        )

    def _release_unfinished(self) -> None:
        try:
            released = self.work.release(self.worker_id)
        except Exception as error:  # the database is gone: recovery takes the tasks back later
            log.error("unfinished tasks could not be queued again at shutdown: %s", error)
            return
        if released:
            log.warning("queued again at shutdown: tasks %s", [task_id for task_id, _slug in released])

    def metrics_exposition(self) -> bytes:
        """``/metrics``: this process's, the database's task counts, and its workers' (the
        embedded worker's). Blocks for a database round trip."""
        return generate_latest(self.metrics.registry) + self.dispatcher.metrics()

    def callback_body(self, record: TaskRecord) -> dict[str, object]:
        """What a callback posts: the task's Task/Detail answer in the hosted protocol."""
        return task_list_body([render_task(record, self.files, self.catalog.description_of(record.row.model_slug))])

    def not_ready(self) -> list[str]:
        """Why this process cannot serve tasks now: its database unreachable, its workers loading,
        stopped or without a model. Empty when ready. (Blocks for a database round trip.)"""
        reasons = []
        try:
            self.db.ping()
        except Exception as error:
            reasons.append(f"the database cannot be reached ({type(error).__name__})")
        if problem := self.dispatcher.not_ready():
            reasons.append(problem)
        return reasons

    def load_error(self, slug: str) -> str | None:
        """Why ``slug`` cannot run here (its model failed to load), or None."""
        return self.dispatcher.load_error(slug)

    def _make_workers(self, devices: list[str] | None = None, slugs: list[str] | None = None) -> list[Worker]:
        """One worker per device (default: the configured ones), each loading every model (or those
        of ``slugs``) there; a model that fails to load is kept with its reason, and the others serve."""
        from fluxhost.engines import Engine, build_engine

        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        self.moderator.load()
        upsampler = self._load_upsampler()
        workers = []
        for device in devices or self.settings.device_list:
            models = {}
            loaded: dict[str, Engine | Exception] = {}  # slugs with the same pipeline settings share one engine
            load_seconds: dict[str, float] = {}
            for slug, model in self.models.items():
                if slugs and slug not in slugs:
                    continue
                same = model.model_dump_json(exclude={"description", "exposed_inputs", "setting"})
                if same not in loaded:
                    try:
                        started = time.monotonic()
                        engine = build_engine(model, self.settings, device)
                        engine.load()
                        loaded[same] = engine
                        load_seconds[same] = time.monotonic() - started
                    except Exception as error:
                        loaded[same] = error
                found = loaded[same]
                if isinstance(found, Exception):
                    log.error("model %s could not be loaded: %s", slug, found)
                    models[slug] = ServedModel(slug, model, None, str(found) or type(found).__name__)
                    continue
                log.warning("SERVING %s with %s", slug, found.description)
                self.worker_metrics.engine_load_seconds.labels(slug, device).set(load_seconds[same])
                models[slug] = ServedModel(slug, model, found)
            # One id for the process: recovery knows a process, not its devices.
            workers.append(Worker(self.worker_id, self.work, models, self.files, self.events,
                                  self.settings.lease_seconds, previews=self.settings.previews,
                                  moderator=self.moderator, upsampler=upsampler,
                                  upsampler_fallback=self.settings.upsampler_fallback,
                                  metrics=self.worker_metrics))
        return workers

    def _load_upsampler(self) -> Upsampler | None:
        settings = self.settings
        try:
            if settings.upsampler_url:
                api_key = settings.upsampler_api_key.get_secret_value()
                return ChatCompletions(settings.upsampler_url, settings.upsampler_model, api_key,
                                       settings.upsampler_timeout_seconds)
            if settings.upsampler_local:
                return LocalLanguageModel(settings.upsampler_local)
        except Exception as error:  # tasks asking for upsampling then fail (or fall back) with this reason
            log.error("the prompt upsampler could not be loaded: %s", error)
        return None

    def _recover(self, lost: str | None = None) -> None:
        """Queue again (or fail for good) the tasks of workers that are gone: a process of this
        host that no longer runs, any worker whose lease ran out, and ``lost`` (our child worker
        process, which died). Our own tasks are running here whatever their lease says (one step
        can outlast it)."""
        dead = {worker for worker in self.work.claiming_workers() if not worker_may_be_alive(worker)}
        if lost:
            dead.add(lost)
        alive = None if lost == self.worker_id else self.worker_id
        recovery = self.work.recover(self.settings.max_attempts, dead_workers=dead, alive_worker=alive)
        if recovery.requeued or recovery.failed:
            log.warning("recovered unfinished tasks: requeued %s, failed %s",
                        [task_id for task_id, _slug in recovery.requeued], recovery.failed)
        for task_id, model_slug in recovery.requeued:
            self.dispatcher.notify(task_id, model_slug)
        for folder in recovery.failed_folders:
            try:
                self.files.clear(folder)
            except Exception as error:
                log.warning("files of a task given up could not be removed: %s", error)

    def _start_janitor(self) -> None:
        self._janitor = threading.Thread(target=self._janitor_loop, name="fluxhost-janitor", daemon=True)
        self._janitor.start()

    def _janitor_loop(self) -> None:
        """Recovery twice a lease (at most every :data:`JANITOR_SECONDS`), and old nonces purged."""
        interval = min(JANITOR_SECONDS, self.settings.lease_seconds / 2)
        while not self._stopping.wait(interval):
            try:
                self._recover()
                self.auth.purge_nonces()
            except Exception:
                log.exception("janitor pass failed")
