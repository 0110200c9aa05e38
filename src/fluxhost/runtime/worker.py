"""One task from claim to terminal state: the lifecycle, the engine, the files, the events."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from fluxhost.demo import serves_demo, unknown_words, vocabulary_notice
from fluxhost.engines.base import (
    ControlSettings,
    Engine,
    GenerationRequest,
    GenerationStopped,
    KindUnsupported,
    Preview,
    batch_key,
)
from fluxhost.engines.training import Checkpoint, TrainingStopped
from fluxhost.events import EventBus, Progress, TaskEvent
from fluxhost.input_images import ImageLimits, decode
from fluxhost.loras import SAFETENSORS_SUFFIX, SAFETENSORS_TYPE
from fluxhost.metrics import WorkerMetrics
from fluxhost.orders import FileRef, WorkOrder
from fluxhost.runtime.adapter_files import AdapterFiles, AdapterUnavailable
from fluxhost.runtime.lanes import Lane, lane_of, lanes
from fluxhost.runtime.leases import Leases
from fluxhost.runtime.outputs import OutputNotStored, preview_data_url, storage_problem, store_images
from fluxhost.runtime.training import TrainingRun
from fluxhost.safety.moderator import Moderator
from fluxhost.settings import ModelSettings
from fluxhost.statuses import LOG_EVENTS, TERMINAL, Outcome, Status, stages
from fluxhost.storage import FileStore
from fluxhost.store.database import DATABASE_FAULTS
from fluxhost.store.uploads import NewUpload
from fluxhost.store.work import ClaimedTask, NewOutput, WorkStore
from fluxhost.tracing import end_span, start_span
from fluxhost.upsampling import Upsampler, UpsamplingFailed

log = logging.getLogger(__name__)

# Preprocessing has nothing slow to do yet (inputs were validated at Run, the engine is warm), so
# the claim stamps accept through assign in the same write; ``task_start`` waits for the engine
# to really start (a generation may queue for the model first).
CLAIMED_THROUGH = Status.ASSIGN
HAND_BACK_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)  # waits between tries, the last repeated
BATCH_POLL_SECONDS = 0.01


def generation_request(order: WorkOrder, model: ModelSettings) -> GenerationRequest:
    """What the engine is asked for: the order, with the model's defaults where it gives none."""
    return GenerationRequest(
        prompt=order.prompt,
        width=order.width,
        height=order.height,
        seed=order.seed,
        steps=order.steps or model.steps,
        guidance=model.guidance if order.guidance is None else order.guidance,
        num_images=order.num_images,
        strength=order.strength if order.strength is not None or model.kind != "image-to-image" else model.strength,
        control=ControlSettings(**order.control.model_dump()) if order.control else None,
    )


class Moderated(Exception):
    """Moderation refused a task's prompt or image; the message is the task's ``debugerror``."""


class TaskStopped(Exception):
    """The task left our hands while running: killed, or its lease was taken over."""


@dataclass
class ServedModel:
    """A model slug with its settings and its loaded engine (or why it could not be loaded)."""

    slug: str
    settings: ModelSettings
    engine: Engine | None
    load_error: str = ""


@dataclass
class RunLog:
    """What one run has written and stored so far: its log lines, and files to remove if it ends
    without them."""

    lines: list[str] = field(default_factory=list)
    saved: list[NewOutput] = field(default_factory=list)
    claimed_at: float = field(default_factory=time.time)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class Worker:
    def __init__(
        self,
        worker_id: str,
        store: WorkStore,
        models: dict[str, ServedModel],
        files: FileStore,
        events: EventBus,
        lease_seconds: float,
        previews: bool = False,
        moderator: Moderator | None = None,
        upsampler: Upsampler | None = None,
        upsampler_fallback: bool = False,
        metrics: WorkerMetrics | None = None,
        adapter_files: AdapterFiles | None = None,
    ):
        self.worker_id = worker_id
        self.store = store
        self.models = models
        self.files = files
        self.events = events
        self.lease_seconds = lease_seconds
        self.previews = previews
        self.moderator = moderator or Moderator()
        self.upsampler = upsampler
        self.upsampler_fallback = upsampler_fallback
        self.metrics = metrics or WorkerMetrics()
        self.adapter_files = adapter_files
        self._kinds = frozenset(model.settings.kind for model in models.values())
        self._running: set[int] = set()
        self._killed: set[int] = set()
        self._halting = False
        self._leases = Leases(store, worker_id, lease_seconds)
        events.subscribe(self._notice_kill)

    def _notice_kill(self, event: TaskEvent) -> None:
        """Kill and Cancel publish ``task_cancel`` after changing the row."""
        if event.type == Status.CANCEL:
            self.stop_task(event.task_id)

    def stop_task(self, task_id: int) -> None:
        """Task ``task_id`` was killed: if it runs here, its generation stops at its next step,
        without asking the database."""
        if task_id in self._running:
            self._killed.add(task_id)

    def halt(self) -> None:
        """Stop the running generations at their next step (the worker is shutting down): their
        tasks end up held by no one running them, for :meth:`WorkStore.release` to queue again."""
        self._halting = True
        self._leases.stop()

    @property
    def lanes(self) -> tuple[Lane, ...]:
        """The lanes its threads claim in (:mod:`fluxhost.runtime.lanes`)."""
        return lanes(self._kinds)

    def lane(self, slug: str) -> Lane:
        """The lane that runs tasks of model ``slug`` (one of ours)."""
        return lane_of(self.models[slug].settings.kind, self._kinds)

    def claim(self, task_id: int | None = None, training: Lane = None) -> list[ClaimedTask]:
        """The oldest queued task of our models (or task ``task_id``, if still queued), with the
        queued tasks that can share its pipeline call (same model, size, steps and guidance; up to
        the model's ``max_batch``, waiting up to its ``batch_wait_ms`` for more), all now ours and
        in :data:`CLAIMED_THROUGH`. Empty when there is no such task. ``training``: only of the
        training models (True) or only of the others (False), for a lane of its own."""
        if task_id is None:
            slugs = [slug for slug, model in self.models.items()
                     if training is None or (model.settings.kind == "train") == training]
            if not slugs:
                return []
            first = self.store.claim_next(self.worker_id, slugs, self.lease_seconds, through=CLAIMED_THROUGH)
        else:
            first = self.store.claim_queued(task_id, self.worker_id, self.lease_seconds, through=CLAIMED_THROUGH)
        if first is None:
            return []
        batch = self._claim_batch(first)
        now = time.time()
        for task in batch:
            self.metrics.queue_wait_seconds.labels(task.model_slug).observe(max(0.0, now - task.created_at))
        return batch

    def _claim_batch(self, first: ClaimedTask) -> list[ClaimedTask]:
        """``first`` and the queued tasks that join its pipeline call (see :meth:`claim`)."""
        model = self.models[first.model_slug]
        batch = [first]
        if (model.engine is None or model.settings.max_batch == 1 or first.order.input_images
                or first.order.training is not None):
            return batch  # edits run one per call: each brings its own image; trainings each their own
        key = batch_key(generation_request(first.order, model.settings))

        def joins(order: WorkOrder) -> bool:
            return (not order.input_images and order.loras == first.order.loras
                    and batch_key(generation_request(order, model.settings)) == key)

        deadline = time.monotonic() + model.settings.batch_wait_ms / 1000
        while True:
            batch += self.store.claim_more(self.worker_id, first.model_slug, self.lease_seconds,
                                           model.settings.max_batch - len(batch), joins, through=CLAIMED_THROUGH)
            if len(batch) >= model.settings.max_batch or time.monotonic() >= deadline:
                return batch
            time.sleep(min(BATCH_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def run(self, batch: list[ClaimedTask]) -> list[tuple[int, str]]:
        """Take the tasks :meth:`claim` returned to their ends. Never raises: when the database
        fails under a run, its unfinished tasks are handed back to the queue once it answers;
        returns those, (task id, model slug), for a dispatcher that must announce them again."""
        self._running.update(task.id for task in batch)
        spans = {task.id: start_span("fluxhost.task", carrier=task.order.trace, **{
            "fluxhost.task_id": task.id, "fluxhost.model": task.model_slug}) for task in batch}
        try:
            with self._leases.holding([task.id for task in batch]):
                self._run_batch(batch, spans)
            return []
        except DATABASE_FAULTS:
            log.exception("tasks %s could not be taken to their end; queueing them again",
                          [task.id for task in batch])
            return self._hand_back([task.id for task in batch])
        except Exception as error:  # a bug: those tasks fail, never to be retried in a loop
            log.exception("tasks %s failed unexpectedly", [task.id for task in batch])
            for task in batch:
                try:
                    self._end_failed(task, f"Internal error: {type(error).__name__}")
                except Exception:
                    log.exception("task %s could not be marked failed", task.id)
            return []
        finally:
            for task in batch:
                self._running.discard(task.id)
                self._killed.discard(task.id)
                end_span(spans[task.id])

    def _hand_back(self, task_ids: list[int]) -> list[tuple[int, str]]:
        """Queue again those of ``task_ids`` we still hold, retrying until the database takes it
        (or the worker halts: recovery at the next start does it then)."""
        for attempt in itertools.count():
            try:
                return self.store.release(self.worker_id, task_ids)
            except Exception as error:
                if self._halting:
                    return []
                wait = HAND_BACK_RETRY_SECONDS[min(attempt, len(HAND_BACK_RETRY_SECONDS) - 1)]
                log.warning("queueing tasks %s again failed (%s); retrying in %s s", task_ids, error, wait)
                time.sleep(wait)

    def _run_batch(self, batch: list[ClaimedTask], spans: dict[int, Any]) -> None:
        """``spans``: each task's trace span (None where tracing is off)."""
        for task in batch:
            for status in stages(Status.ACCEPT, CLAIMED_THROUGH):
                self._emit(task, status)
        runs = {task.id: RunLog() for task in batch}
        model = self.models[batch[0].model_slug]
        if model.engine is None:
            for task in batch:
                self._fail(task, runs[task.id], RuntimeError(f"model {model.slug} could not be loaded: "
                                                             f"{model.load_error}"))
            return
        if batch[0].order.training is not None:
            self._train(batch[0], model, runs[batch[0].id])
            return
        prepared = []
        for task in batch:
            try:
                prepared.append((task, self._prepare(task, model, runs[task.id])))
            except Moderated as verdict:
                self._refuse(task, runs[task.id], str(verdict))
            except DATABASE_FAULTS:
                raise  # not the task's fault: run() hands the batch back
            except Exception as error:
                log.warning("task %s failed before generation: %s", task.id, error)
                self._fail(task, runs[task.id], error)
        if not prepared:
            return
        batch = [task for task, _request in prepared]
        requests = [request for _task, request in prepared]
        try:
            results, seconds = self._generate(batch, requests, model.engine, runs, spans)
        except DATABASE_FAULTS:
            raise
        except Exception as error:  # every task of the call fails; the worker goes on with the next
            log.exception("tasks %s failed", [task.id for task in batch])
            for task in batch:
                self._fail(task, runs[task.id], error)
            return
        for task, request, images in zip(batch, requests, results, strict=True):
            run = runs[task.id]
            try:
                if images is None:
                    raise TaskStopped
                run.lines.append(f"Generated {len(images)} image(s) in {seconds:.2f}s.")
                for image in images:
                    category = self.moderator.check_image(image, task.order.safety_tolerance)
                    if category:
                        raise Moderated(f"Content Moderated: {category}")
                self._store(task, model, request, images, run)
            except Moderated as verdict:
                self._refuse(task, run, str(verdict))
            except TaskStopped:
                self._stopped(task, run)
            except DATABASE_FAULTS:
                raise  # its files, if written, are cleared by its next run
            except Exception as error:
                log.exception("task %s failed", task.id)
                self._fail(task, run, error)

    def _generate(self, batch: list[ClaimedTask], requests: list[GenerationRequest], engine: Engine,
                  runs: dict[int, RunLog], spans: dict[int, Any]) -> tuple[list[list[Image.Image] | None], float]:
        """One pipeline call for the batch: each task's images, or None for a task stopped on the
        way; and the seconds the call took."""
        for task, request in zip(batch, requests, strict=True):
            run = runs[task.id]
            run.lines.append(
                f"model {task.model_slug}: {engine.description}; seed {request.seed}, "
                f"{request.width}x{request.height}, {request.steps} steps, guidance {request.guidance}"
            )
            if len(batch) > 1:
                run.lines.append(f"Batched with {len(batch) - 1} other task(s) in one pipeline call.")
        stopped: set[int] = set()
        started = last_step = time.monotonic()
        step_seconds = self.metrics.step_seconds.labels(batch[0].model_slug)

        def on_start() -> None:
            nonlocal started, last_step
            started = last_step = time.monotonic()
            moved = self.store.advance_each([task.id for task in batch], self.worker_id, Status.START,
                                            lease_seconds=self.lease_seconds)
            for task, started_here in zip(batch, moved, strict=True):
                if started_here:
                    self._emit(task, Status.START)
                else:
                    stopped.add(task.id)

        def on_step(index: int, step: int, total: int, preview: Preview | None) -> bool:
            nonlocal last_step
            task = batch[index]
            if task.id in stopped:
                return False
            now = time.monotonic()
            if index == 0:
                step_seconds.observe(now - last_step)
                last_step = now
            # a lease lost is also how a kill is seen when its event came through no bus we listen to
            if task.id in self._killed or self._halting or self._leases.lost(task.id):
                runs[task.id].lines.append(f"Stopped at step {step} of {total}.")
                stopped.add(task.id)
                return False
            picture = self._preview(preview) if self.previews and preview else None
            self.events.publish(TaskEvent(task.id, task.socket_token, Status.OUTPUT,
                                          progress=Progress.measure(step, total, now - started), preview=picture))
            return True

        engine_span = start_span("fluxhost.engine", parent=spans[batch[0].id],
                                 links=tuple(spans[task.id] for task in batch[1:]),
                                 **{"fluxhost.model": batch[0].model_slug, "fluxhost.batch_size": len(batch)})
        try:
            results = engine.generate_batch(requests, on_start, on_step)
        except GenerationStopped:
            results = [None] * len(batch)
        finally:
            end_span(engine_span)
        return results, time.monotonic() - started

    def _train(self, task: ClaimedTask, model: ServedModel, run: RunLog) -> None:
        """A training task, to its end: completed with its adapter kept as the project's private
        LoRA; killed with the checkpoints it made kept as its outputs; failed; or, the worker
        halting, stopped to be taken up again from its newest checkpoint."""
        def keep_going() -> bool:
            return not (task.id in self._killed or self._halting or self._leases.lost(task.id))

        order = task.order
        try:
            # reads the checkpoints a run before this one kept: the file store may fail
            training = TrainingRun(task, self.files, self.events, run.lines, keep_going,
                                   lambda picture: self.moderator.check_image(picture, order.safety_tolerance),
                                   holds=lambda: task.id in self._killed or not self._leases.lost(task.id))
            if "train" not in model.engine.kinds:
                raise KindUnsupported(f"{model.engine.description} does not train LoRA adapters")
            for text in (*order.training.sample_prompts, *(image.caption for image in order.training.images)):
                if category := self.moderator.check_prompt(text, order.safety_tolerance):
                    raise Moderated(f"Request Moderated: {category}")
            self._advance(task, Status.START)
            final = training.run(model.engine)
            self._keep_training(task, training, final, run)
        except Moderated as verdict:
            self._refuse(task, run, str(verdict))
        except (TrainingStopped, TaskStopped):
            if task.id in self._killed:
                self.store.add_outputs(task.id, training.outputs())
            self._stopped(task, run)
        except DATABASE_FAULTS:
            raise
        except Exception as error:
            log.exception("training task %s failed", task.id)
            self._fail(task, run, error)

    def _keep_training(self, task: ClaimedTask, training: TrainingRun, final: Checkpoint, run: RunLog) -> None:
        """End a training: its adapter kept as one of the project's uploads (a private LoRA model),
        its samples and checkpoints as its outputs, in one write."""
        order = task.order.training
        folder, name = self.files.new_folder(), f"upload{SAFETENSORS_SUFFIX}"
        try:
            self.files.save(folder, name, final.adapter)
        except Exception as error:
            raise OutputNotStored(f"the adapter could not be stored ({storage_problem(error)})") from error
        kept = NewUpload(order.project_id, order.key_id, f"{order.name or 'lora'}{SAFETENSORS_SUFFIX}", folder, name,
                         SAFETENSORS_TYPE, len(final.adapter))
        kept_id = uuid.uuid4().hex
        run.lines.append(f"The adapter is your private LoRA model {kept_id} ({kept.name}): give it as "
                         "selectedLoraModelPrivate to the LoRA tools.")
        self._emit(task, Status.OUTPUT_FULL, text=run.text)
        if not self.store.finish(task.id, self.worker_id, training.outputs(), run.text, time.time(),
                                 kept=(kept_id, kept)):
            self.files.delete(folder, name)
            raise TaskStopped
        self.metrics.finished_task(task.model_slug, "completed", run.claimed_at)
        for status in stages(Status.END, Status.POSTPROCESS_END):
            self._emit(task, status)

    def _prepare(self, task: ClaimedTask, model: ServedModel, run: RunLog) -> GenerationRequest:
        """The task's generation request once its prompt passed moderation and, when asked, was
        upsampled (and the rewrite passed moderation too)."""
        order = task.order
        if order.ignored_inputs:
            run.lines.append(f"Ignored inputs this tool does not take: {', '.join(order.ignored_inputs)}.")
        request = generation_request(order, model.settings)
        if category := self.moderator.check_prompt(order.prompt, order.safety_tolerance):
            raise Moderated(f"Request Moderated: {category}")
        editing = model.settings.kind == "edit"
        if serves_demo(model.settings) and (unknown := unknown_words(order.prompt, editing)):
            run.lines.append(vocabulary_notice(unknown, editing))
        if order.input_images:
            request = replace(request, images=tuple(self._input_image(stored) for stored in order.input_images))
        if order.loras:
            if self.adapter_files is None:
                raise AdapterUnavailable("this worker takes no LoRA adapters")
            request = replace(request, adapters=tuple(self.adapter_files.local(lora) for lora in order.loras))
        if not order.prompt_upsampling:
            return request
        try:
            if self.upsampler is None:
                raise UpsamplingFailed("no upsampler could be loaded on this worker (see its log)")
            rewritten = self.upsampler.rewrite(order.prompt, order.seed)
        except UpsamplingFailed as error:
            if not self.upsampler_fallback:
                raise UpsamplingFailed(f"prompt upsampling failed: {error}") from None
            run.lines.append(f"Prompt upsampling failed ({error}): prompt used as given.")
            return request
        if category := self.moderator.check_prompt(rewritten, order.safety_tolerance):
            raise Moderated(f"Request Moderated: {category}")
        run.lines.append(f"Prompt upsampled by {self.upsampler.description}: {rewritten}")
        return replace(request, prompt=rewritten)

    def _input_image(self, stored: FileRef) -> Image.Image:
        data = self.files.read(stored.folder, stored.name)
        if data is None:
            raise RuntimeError(f"the input image {stored.name} is no longer stored (deleted?)")
        return decode(data, ImageLimits(max_bytes=len(data), max_pixels=2**31)).image

    def _refuse(self, task: ClaimedTask, run: RunLog, reason: str) -> None:
        """End a task that moderation refused: nothing generated or kept, the category said, never
        the text that was refused."""
        self._discard(run.saved)
        run.lines.append(reason)
        if self.store.fail(task.id, reason, run.text, worker_id=self.worker_id, outcome=Outcome.MODERATED):
            self.metrics.finished_task(task.model_slug, "moderated", run.claimed_at)
            self._emit(task, Status.ERROR_FULL, text=reason)
            self._emit(task, Status.POSTPROCESS_END)

    def _store(self, task: ClaimedTask, model: ServedModel, request: GenerationRequest, images: list[Image.Image],
               run: RunLog) -> None:
        """Encode and keep a task's images, then end it (one write: a task's last moves are not
        worth a round trip each to a database across the network)."""
        generated_at = time.time()
        self._emit(task, Status.OUTPUT_FULL, text=run.text)
        order = task.order
        metadata = {
            "model": task.model_slug,
            "prompt": request.prompt,
            **({"originalPrompt": order.prompt} if request.prompt != order.prompt else {}),
            "seed": request.seed,
            "width": request.width,
            "height": request.height,
            "steps": request.steps,
            "guidance": request.guidance,
            "aspectRatio": order.aspect_ratio,
            "engine": model.engine.description,
        }
        folder = task.files_folder
        if task.previous_files_folder:
            self._clear(task.previous_files_folder)
        store_images(self.files, folder, images, order.output_format, metadata, run.saved)
        if not self.store.finish(task.id, self.worker_id, run.saved, run.text, generated_at,
                                 owes_callback=task.owes_callback):
            raise TaskStopped
        self.metrics.finished_task(task.model_slug, "completed", run.claimed_at)
        for status in stages(Status.END, Status.POSTPROCESS_END):
            self._emit(task, status)

    def _stopped(self, task: ClaimedTask, run: RunLog) -> None:
        self._discard(run.saved)
        if task.id in self._killed:
            run.lines.append("Stopped by Kill.")
        elif self._halting:
            run.lines.append("Stopped: the worker shut down; the task is queued again.")
        else:
            run.lines.append("Stopped: this worker no longer holds the task.")
        self.store.set_debug_output(task.id, run.text)
        self.metrics.finished_task(task.model_slug, "stopped", run.claimed_at)
        log.info("task %s stopped while running", task.id)

    def _fail(self, task: ClaimedTask, run: RunLog, error: Exception) -> None:
        """End a task as failed: in ``task_postprocess_end`` (pexit 1) whether or not its generation
        started, after a ``task_error_full`` frame with the reason. The hosted API's clients wait
        for ``task_postprocess_end`` or ``task_cancel``: its docs call ``task_error`` an interim
        event, and a client (n8n's node) polling for the end would wait out its whole timeout."""
        self._discard(run.saved)
        reason = str(error) if isinstance(error, OutputNotStored) else f"{type(error).__name__}: {error}"
        if self._end_failed(task, reason, run.text):
            self.metrics.finished_task(task.model_slug, "failed", run.claimed_at)

    def _end_failed(self, task: ClaimedTask, reason: str, debug_output: str = "") -> bool:
        """Record the task failed (while we hold it), then tell it: ``task_error_full`` with the
        reason and ``task_postprocess_end``, which its socket's followers wait for. Whether it was."""
        if not self.store.fail(task.id, reason, debug_output, worker_id=self.worker_id):
            return False
        self._emit(task, Status.ERROR_FULL, text=reason)
        self._emit(task, Status.POSTPROCESS_END)
        return True

    def _preview(self, preview: Preview) -> str | None:
        """A progress preview, or None when the engine cannot draw one: previews are a nicety,
        never a reason for a task to fail."""
        try:
            return preview_data_url(preview())
        except Exception:
            log.warning("step preview failed; progress goes on without it", exc_info=True)
            return None

    def _advance(self, task: ClaimedTask, *statuses: Status) -> None:
        if not self.store.advance(task.id, self.worker_id, *statuses, lease_seconds=self.lease_seconds):
            raise TaskStopped
        for status in statuses:
            self._emit(task, status)

    def _emit(self, task: ClaimedTask, status: Status, text: str | None = None) -> None:
        self.events.publish(TaskEvent(task.id, task.socket_token, status, text=text,
                                      owes_callback=task.owes_callback and status in TERMINAL))
        if status not in LOG_EVENTS:  # text, not transitions: their text may hold the prompt
            log.info("task %s %s", task.id, status.value, extra={"task_id": task.id, "status": status.value})

    def _clear(self, folder: str) -> None:
        """Remove what the task's run before this one left unrecorded (it died after writing)."""
        try:
            self.files.clear(folder)
        except Exception as error:
            log.warning("files an earlier run left could not be removed: %s", storage_problem(error))

    def _discard(self, saved: list[NewOutput]) -> None:
        """Remove a run's stored files; one that cannot be removed now (its folder unwritable) is
        logged and left: the task ends either way."""
        for output in saved:
            try:
                self.files.delete(output.folder, output.name)
            except Exception as error:
                log.warning("output %s of an ended run could not be removed: %s", output.name,  # never its folder
                            storage_problem(error))
