"""The API process's composition root: settings turned into a store, keys, files, events, callbacks,
a dispatcher (worker threads here, a child worker process, or Celery) and the janitor (which also
expires uploads), wired into the :class:`~fluxhost.operations.Operations` every door calls.

Nothing here knows about HTTP (:mod:`fluxhost.app` mounts the doors over a service), and no
worker process builds one: they build a :class:`~fluxhost.runtime.host.Runtime`.
"""

from __future__ import annotations

from prometheus_client import generate_latest

from fluxhost.auth import Authenticator
from fluxhost.callbacks.poster import WebhookPoster
from fluxhost.callbacks.sender import CallbackSender
from fluxhost.events import EventBus, open_event_bus
from fluxhost.input_images import ImageLimits
from fluxhost.limits import TaskLimits, auth_failure_limit, request_rate
from fluxhost.loras import library
from fluxhost.metrics import ApiMetrics
from fluxhost.models import served_models
from fluxhost.operations import Operations
from fluxhost.runtime.dispatch import Dispatcher
from fluxhost.runtime.host import Runtime, new_worker_id, open_moderator
from fluxhost.runtime.janitor import Janitor
from fluxhost.settings import Settings
from fluxhost.storage import FileStore, open_file_store
from fluxhost.store.database import Database
from fluxhost.store.deliveries import Deliveries
from fluxhost.store.keys import KeyStore
from fluxhost.store.nonces import NonceStore
from fluxhost.store.records import TaskView
from fluxhost.store.tasks import TaskStore
from fluxhost.store.uploads import UploadStore
from fluxhost.store.work import WorkStore
from fluxhost.tools import Catalog
from fluxhost.urlguard import Allowlist
from fluxhost.wiro.render import render_task, task_list_body


class Service:
    def __init__(self, settings: Settings, worker_id: str | None = None):
        """``worker_id``: the id this process's workers claim tasks under (default: a new one).
        Connects to the database (migrating it) and to Redis when configured, raising their errors
        when they cannot be reached; ValueError for settings that name no valid model."""
        self.settings = settings
        self.models = served_models(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url, settings.database_timeout_seconds)
        self.db.migrate()
        self.tasks = TaskStore(self.db)
        self.work = WorkStore(self.db)
        self.keys = KeyStore(self.db)
        events_url = settings.resolved_events_url
        self.auth = Authenticator(
            self.keys, NonceStore(self.db), settings.resolved_nonce_window_seconds, settings.nonce_retention_seconds,
            strict_nonces=settings.nonce_mode == "strict",
            failures=auth_failure_limit(settings.auth_failure_limit_per_address, settings.auth_failure_limit_per_key,
                                        events_url),
        )
        self.files: FileStore = open_file_store(settings)
        self.events: EventBus = open_event_bus(events_url)
        self.moderator = open_moderator(settings)  # its classifiers load with the workers, if they run here
        self.catalog = Catalog.from_models(self.models, loras=library(settings.lora_dir))
        self.url_allowlist = Allowlist.parse(settings.callback_allowlist)
        self.metrics = ApiMetrics()
        self.metrics.watch_tasks(self.work.unfinished_by_status)
        self.callbacks = CallbackSender(
            Deliveries(self.db), self.tasks, self.events, self.callback_body,
            WebhookPoster(self.url_allowlist, settings.callback_timeout_seconds),
            settings.callback_max_attempts, settings.callback_backoff_seconds, settings.callback_per_origin,
            self.metrics.callback_attempts,
        )
        self.worker_id = worker_id or new_worker_id()
        self.runtime: Runtime | None = None  # with worker threads in this process
        self.dispatcher = self._dispatcher()
        self.operations = Operations(
            self.auth, self.tasks, UploadStore(self.db), self.files, self.events, self.dispatcher, self.catalog,
            self.url_allowlist,
            request_rate=request_rate(settings.rate_limit_per_minute, events_url),
            upsampling=bool(settings.upsampler_url or settings.upsampler_local),
            image_limits=ImageLimits(settings.input_max_bytes, settings.input_max_pixels,
                                     settings.input_timeout_seconds),
            task_limits=TaskLimits(settings.max_unfinished_tasks_per_key, settings.max_unfinished_tasks_per_project,
                                   settings.max_queued_tasks_per_model),
            max_prompt_chars=settings.max_prompt_chars,
            upload_quota_bytes=settings.upload_quota_bytes,
            upload_expiry_seconds=settings.upload_expiry_seconds,
            lora_dir=settings.lora_dir, lora_max_bytes=settings.lora_max_bytes,
            archive_max_bytes=settings.archive_max_bytes, training_max_images=settings.training_max_images,
        )
        self.janitor = Janitor(self.work, self.files, self.events, self.worker_id, max_attempts=settings.max_attempts,
                               lease_seconds=settings.lease_seconds, requeued=self.dispatcher.notify,
                               chores=[self.auth.purge_nonces, self.operations.expire_uploads])

    def _dispatcher(self) -> Dispatcher:
        """Celery behind a broker, else the child worker process (the default), else worker
        threads in this process."""
        settings = self.settings
        if settings.broker_url:
            from fluxhost.runtime.dispatch.celery import CeleryDispatcher

            return CeleryDispatcher(settings.broker_url, settings.broker_visibility_seconds, self.work,
                                    settings.broker_transport_options)
        if settings.worker_process:
            from fluxhost.runtime.dispatch.child import ChildProcessDispatcher

            return ChildProcessDispatcher(settings, self.worker_id, self.models, self.events,
                                          on_lost=lambda: self.janitor.recover(lost=self.worker_id))
        from fluxhost.runtime.dispatch.threads import ThreadDispatcher

        self.runtime = Runtime(settings, self.worker_id, self.work, self.files, self.events, self.models,
                               moderator=self.moderator)
        return ThreadDispatcher(self.runtime.make_workers, settings.worker_concurrency, self.runtime.metrics)

    def start(self) -> None:
        """Take back what a crash left, then start the workers, the callbacks and the janitor."""
        self.janitor.recover()
        self.dispatcher.start()
        self.callbacks.start()
        self.janitor.start()

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop taking tasks, give the running ones ``grace_seconds`` (default: the setting) to
        finish, queue again what is left, then close."""
        self.janitor.stop()
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self.dispatcher.stop(grace)
        if self.runtime is not None:  # a child releases its own tasks; Celery redelivers
            self.runtime.release_unfinished()
        self.callbacks.stop()
        self.events.close()
        self.db.dispose()

    def metrics_exposition(self) -> bytes:
        """``/metrics``: this process's, the database's task counts, and its workers' (the
        embedded worker's). Blocks for a database round trip."""
        return generate_latest(self.metrics.registry) + self.dispatcher.metrics()

    def callback_body(self, task: TaskView) -> dict[str, object]:
        """What a callback posts: the task's Task/Detail answer in the hosted protocol."""
        return task_list_body([render_task(task, self.files, self.catalog.description_of(task.model_slug))])

    def not_ready(self) -> list[str]:
        """Why this process cannot serve tasks now: its database unreachable or taking no writes,
        its workers loading, stopped or without a model. Empty when ready. (Blocks for two
        database round trips, one a write.)"""
        reasons = []
        try:
            self.db.ping()
        except Exception as error:
            reasons.append(f"the database cannot be reached ({type(error).__name__})")
        else:
            try:
                self.db.heartbeat()
            except Exception as error:
                reasons.append(f"the database takes no writes ({type(error).__name__})")
        if problem := self.dispatcher.not_ready():
            reasons.append(problem)
        return reasons
