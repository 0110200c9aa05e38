"""One task from claim to terminal state: the lifecycle, the engine, the files, the events."""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass, field

from PIL import Image

from fluxhost.engines import Engine, GenerationRequest
from fluxhost.engines.base import GenerationStopped, Preview
from fluxhost.events import EventBus, Progress, TaskEvent
from fluxhost.files import FileStore
from fluxhost.images import CONTENT_TYPES, FILE_EXTENSIONS, encode
from fluxhost.settings import ModelSettings
from fluxhost.statuses import Status, stages
from fluxhost.store.work import ClaimedTask, NewOutput, WorkStore

log = logging.getLogger(__name__)

# Preprocessing has nothing slow to do yet (inputs were validated at Run, the engine is warm), so
# the claim stamps accept through assign in the same write; ``task_start`` waits for the engine
# to really start (a generation may queue for the model first).
CLAIMED_THROUGH = Status.ASSIGN
PREVIEW_MAX_SIDE = 256


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

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def preview_data_url(image: Image.Image) -> str:
    """A step preview as a small JPEG data URL, for progress events."""
    small = image.convert("RGB")
    small.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


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
    ):
        self.worker_id = worker_id
        self.store = store
        self.models = models
        self.files = files
        self.events = events
        self.lease_seconds = lease_seconds
        self.previews = previews
        self._running: set[int] = set()
        self._killed: set[int] = set()
        events.subscribe(self._notice_kill)

    def _notice_kill(self, event: TaskEvent) -> None:
        """Kill and Cancel publish ``task_cancel`` after changing the row: the running generation
        learns of it at its next step without asking the database."""
        if event.type == Status.CANCEL and event.task_id in self._running:
            self._killed.add(event.task_id)

    def claim(self) -> ClaimedTask | None:
        """The oldest queued task of our models, now ours and in :data:`CLAIMED_THROUGH`."""
        return self.store.claim_next(self.worker_id, list(self.models), self.lease_seconds, through=CLAIMED_THROUGH)

    def run(self, task: ClaimedTask) -> None:
        """Take a task :meth:`claim` returned to its end. Never raises."""
        self._running.add(task.id)
        try:
            self._run_claimed(task)
        finally:
            self._running.discard(task.id)
            self._killed.discard(task.id)

    def _run_claimed(self, task: ClaimedTask) -> None:
        for status in stages(Status.ACCEPT, CLAIMED_THROUGH):
            self._emit(task, status)
        run = RunLog()
        try:
            self._run(task, run)
        except TaskStopped:
            self._discard(run.saved)
            killed = task.id in self._killed
            run.lines.append("Stopped by Kill." if killed else "Stopped: this worker no longer holds the task.")
            self.store.set_debug_output(task.id, run.text)
            log.info("task %s stopped while running", task.id)
        except Exception as error:  # the task fails; the worker goes on with the next one
            self._discard(run.saved)
            log.exception("task %s failed", task.id)
            reason = f"{type(error).__name__}: {error}"
            if self.store.fail(task.id, reason, run.text):
                self._emit(task, Status.ERROR_FULL, text=reason)
                self._emit(task, Status.POSTPROCESS_END)

    def _run(self, task: ClaimedTask, run: RunLog) -> None:
        model = self.models[task.model_slug]
        if model.engine is None:
            raise RuntimeError(f"model {model.slug} could not be loaded: {model.load_error}")
        order = task.order
        request = GenerationRequest(
            prompt=order.prompt,
            width=order.width,
            height=order.height,
            seed=order.seed,
            steps=order.steps or model.settings.steps,
            guidance=model.settings.guidance if order.guidance is None else order.guidance,
            num_images=order.num_images,
        )
        if order.prompt_upsampling:
            run.lines.append("Prompt upsampling is not available on this server: prompt used as given.")
        run.lines.append(
            f"model {task.model_slug}: {model.engine.description}; seed {request.seed}, "
            f"{request.width}x{request.height}, {request.steps} steps, guidance {request.guidance}"
        )
        started = last_renewal = time.monotonic()

        def on_start() -> None:
            nonlocal started
            started = time.monotonic()
            self._advance(task, Status.START)

        def on_step(step: int, total: int, preview: Preview | None) -> bool:
            nonlocal last_renewal
            now = time.monotonic()
            stopped = task.id in self._killed
            if not stopped and now - last_renewal > self.lease_seconds / 4:
                # Also how a kill is seen when the event came through no bus we listen to.
                stopped = not self.store.renew_lease(task.id, self.worker_id, self.lease_seconds)
                last_renewal = now
            if stopped:
                run.lines.append(f"Stopped at step {step} of {total}.")
                return False
            picture = self._preview(preview) if self.previews and preview else None
            self.events.publish(TaskEvent(task.id, task.socket_token, Status.OUTPUT,
                                          progress=Progress.measure(step, total, now - started), preview=picture))
            return True

        try:
            images = model.engine.generate(request, on_start, on_step)
        except GenerationStopped:
            raise TaskStopped from None
        run.lines.append(f"Generated {len(images)} image(s) in {time.monotonic() - started:.2f}s.")
        self._emit(task, Status.OUTPUT_FULL, text=run.text)
        self._advance(task, Status.END, Status.POSTPROCESS_START)

        metadata = {
            "model": task.model_slug,
            "prompt": request.prompt,
            "seed": request.seed,
            "width": request.width,
            "height": request.height,
            "steps": request.steps,
            "guidance": request.guidance,
            "aspectRatio": order.aspect_ratio,
            "engine": model.engine.description,
        }
        folder = self.files.new_folder()
        for index, image in enumerate(images):
            data = encode(image, order.output_format, {**metadata, "seed": request.seed + index})
            name = f"{index}.{FILE_EXTENSIONS[order.output_format]}"
            self.files.save(folder, name, data)
            run.saved.append(NewOutput(name, CONTENT_TYPES[order.output_format], len(data), folder))
        if not self.store.finish(task.id, run.saved, run.text):
            raise TaskStopped
        self._emit(task, Status.POSTPROCESS_END)

    def _preview(self, preview: Preview) -> str | None:
        """A progress preview, or None when the engine cannot draw one: previews are a nicety,
        never a reason for a task to fail."""
        try:
            return preview_data_url(preview())
        except Exception:
            log.warning("step preview failed; progress goes on without it", exc_info=True)
            return None

    def _advance(self, task: ClaimedTask, *statuses: Status) -> None:
        if not self.store.advance(task.id, *statuses, lease_seconds=self.lease_seconds):
            raise TaskStopped
        for status in statuses:
            self._emit(task, status)

    def _emit(self, task: ClaimedTask, status: Status, text: str | None = None) -> None:
        self.events.publish(TaskEvent(task.id, task.socket_token, status, text=text))

    def _discard(self, saved: list[NewOutput]) -> None:
        for output in saved:
            self.files.delete(output.folder, output.name)
