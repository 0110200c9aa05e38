"""What a process that runs tasks holds: the store's work side, the files, an event bus, and one
:class:`~fluxhost.runtime.worker.Worker` per device with its engines, moderator and upsampler.

The embedded API process, its child worker process and a Celery worker each build one
:class:`Runtime`; none of them needs the API's parts (keys, callbacks, doors) to run a task.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

from fluxhost.demo import DEMO_LABEL, serves_demo
from fluxhost.engines.base import Engine, KindUnsupported
from fluxhost.events import EventBus
from fluxhost.metrics import WorkerMetrics
from fluxhost.models import load_failure
from fluxhost.runtime.adapter_files import AdapterFiles
from fluxhost.runtime.training import TrainingEngine
from fluxhost.runtime.worker import ServedModel, Worker
from fluxhost.safety.moderator import Moderator
from fluxhost.settings import ModelSettings, Settings
from fluxhost.storage import FileStore
from fluxhost.store.work import WorkStore
from fluxhost.upsampling import ChatCompletions, LocalLanguageModel, Upsampler
from fluxhost.urlguard import Allowlist

log = logging.getLogger("fluxhost")

# Settings that do not change the pipeline: slugs differing only in these share one engine (one
# loaded copy of the weights draws, redraws and edits, as its pipeline class allows).
_NOT_PIPELINE = {"description", "exposed_inputs", "setting", "kind", "strength"}


def new_worker_id() -> str:
    """``host-pid-random``: recovery knows a dead process of this host by it."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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


def build_engine(model: ModelSettings, settings: Settings, device: str = "auto") -> Engine:
    """The engine serving ``model`` (as :func:`fluxhost.models.served_models` gives it: its weights
    set, the demo model's where none were configured) on ``device`` (where the model names none):
    the bench engine when asked for; for an upscale model, its ControlNet on its FLUX.1 weights, or
    resampling where it names no ControlNet (the demo model); else diffusers FLUX (the demo model's
    trainings reading its pictures' layouts, :mod:`fluxhost.demo.pictures`)."""
    if settings.engine == "bench":
        from fluxhost.testing.bench_engine import BenchEngine

        return BenchEngine(settings.bench_step_ms / 1000)
    if model.kind == "upscale":
        from fluxhost.engines.upscaling import ControlNetUpscaleEngine, ResamplingUpscaleEngine

        if model.controlnet and not serves_demo(model):
            return ControlNetUpscaleEngine(model.weights, model, device=device)
        return ResamplingUpscaleEngine(model, device=device)
    from fluxhost.engines.flux import FluxEngine

    if serves_demo(model):
        from fluxhost.demo.pictures import FlatPictures

        return FluxEngine(model.weights, model, device=device, label=DEMO_LABEL, pictures=FlatPictures())
    return FluxEngine(model.weights, model, device=device)


def open_moderator(settings: Settings) -> Moderator:
    """The moderator the settings describe (its classifiers load with the workers)."""
    return Moderator(
        settings.safety_terms_dir, text_model=settings.safety_text_model, image_model=settings.safety_image_model,
        image_backend=settings.safety_image_backend,
        unsafe_labels=frozenset(label.strip() for label in settings.safety_unsafe_labels.split(",") if label),
    )


def open_upsampler(settings: Settings) -> Upsampler | None:
    """The configured prompt upsampler, or None (none configured, or it failed to load: tasks
    asking for upsampling then fail, or fall back, with the reason logged here)."""
    try:
        if settings.upsampler_url:
            return ChatCompletions(settings.upsampler_url, settings.upsampler_model,
                                   settings.upsampler_api_key.get_secret_value(), settings.upsampler_timeout_seconds)
        if settings.upsampler_local:
            return LocalLanguageModel(settings.upsampler_local)
    except Exception as error:
        log.error("the prompt upsampler could not be loaded: %s", error)
    return None


class Runtime:
    def __init__(self, settings: Settings, worker_id: str, work: WorkStore, files: FileStore, events: EventBus,
                 models: dict[str, ModelSettings], metrics: WorkerMetrics | None = None,
                 moderator: Moderator | None = None):
        """``worker_id``: what this process's workers claim tasks under (a child worker process
        takes its parent's, so the parent's recovery knows the child's tasks as its own);
        ``models``: the served models, by slug; ``moderator``: the process's own, when it has one
        already (default: one from the settings)."""
        self.settings = settings
        self.worker_id = worker_id
        self.work = work
        self.files = files
        self.events = events
        self.models = models
        self.metrics = metrics or WorkerMetrics()
        self.moderator = moderator or open_moderator(settings)

    def make_workers(self, devices: list[str] | None = None, slugs: list[str] | None = None) -> list[Worker]:
        """One worker per device (default: the configured ones), each loading every model (or those
        of ``slugs``) there; a model that fails to load is kept with its reason, and the others serve."""
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        self.moderator.load()
        upsampler = open_upsampler(self.settings)
        settings = self.settings
        adapter_files = AdapterFiles(self.files, settings.lora_cache_dir or settings.data_dir / "loras",
                                     settings.lora_dir, Allowlist.parse(settings.callback_allowlist),
                                     settings.lora_max_bytes, settings.lora_fetch_seconds,
                                     settings.lora_cache_dir_mb * 2**20)
        workers = []
        for device in devices or self.settings.device_list:
            models = {slug: model for slug, model in self.models.items()
                      if (not slugs or slug in slugs) and settings.works_on(model.kind)}
            workers.append(Worker(self.worker_id, self.work, self._load(models, device), self.files, self.events,
                                  self.settings.lease_seconds, previews=self.settings.previews,
                                  moderator=self.moderator, upsampler=upsampler,
                                  upsampler_fallback=self.settings.upsampler_fallback, metrics=self.metrics,
                                  adapter_files=adapter_files))
        return workers

    def _load(self, models: dict[str, ModelSettings], device: str) -> dict[str, ServedModel]:
        """``models`` loaded on ``device``: slugs with the same pipeline settings share one engine."""
        loaded: dict[str, Engine | str] = {}
        served = {}
        for slug, model in models.items():
            if model.kind == "train":
                served[slug] = self._trainer(slug, model, device)
                continue
            same = (model.kind == "upscale", model.model_dump_json(exclude=_NOT_PIPELINE))
            if same not in loaded:
                started = time.monotonic()
                try:
                    engine = build_engine(model, self.settings, device)
                    engine.load()
                except Exception as error:
                    loaded[same] = load_failure(model, error)
                else:
                    loaded[same] = engine
                    self.metrics.engine_load_seconds.labels(slug, device).set(time.monotonic() - started)
            found = loaded[same]
            if not isinstance(found, str) and model.kind not in found.kinds:
                found = load_failure(model, KindUnsupported(f"{found.description} does not serve kind={model.kind}"))
            if isinstance(found, str):
                log.error("model %s could not be loaded: %s", slug, found)
                served[slug] = ServedModel(slug, model, None, found)
            else:
                log.warning("SERVING %s with %s", slug, found.description)
                served[slug] = ServedModel(slug, model, found)
        return served

    def _trainer(self, slug: str, model: ModelSettings, device: str) -> ServedModel:
        """A training model: its weights are loaded when a training starts (see
        :class:`~fluxhost.runtime.training.TrainingEngine`); a bench server trains nothing."""
        if self.settings.engine == "bench":
            return ServedModel(slug, model, None, "the bench engine trains nothing")
        label = DEMO_LABEL if serves_demo(model) else model.weights
        engine = TrainingEngine(lambda: build_engine(model, self.settings, device), label)
        log.warning("SERVING %s with %s", slug, engine.description)
        return ServedModel(slug, model, engine)

    def release_unfinished(self) -> None:
        """Queue again what this process's workers still hold (they were stopped)."""
        try:
            released = self.work.release(self.worker_id)
        except Exception as error:  # the database is gone: recovery takes the tasks back later
            log.error("unfinished tasks could not be queued again at shutdown: %s", error)
            return
        if released:
            log.warning("queued again at shutdown: tasks %s", [task_id for task_id, _slug in released])
