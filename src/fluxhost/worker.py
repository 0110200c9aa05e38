"""One task from claim to terminal state: the lifecycle, the engine, the files, the events."""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass

from PIL import Image

from fluxhost.engines import Engine, GenerationRequest
from fluxhost.engines.base import Preview
from fluxhost.events import EventBus, TaskEvent
from fluxhost.images import CONTENT_TYPES, FILE_EXTENSIONS, encode
from fluxhost.settings import ModelSettings
from fluxhost.storage import Storage
from fluxhost.store import ClaimedTask, NewOutput, TaskStore
from fluxhost.tasks import Status, stages

log = logging.getLogger(__name__)

# Preprocessing has nothing slow to do yet (inputs were validated at Run, the engine is warm), so
# the claim stamps accept, preprocess and assign in the same write; a stage that starts doing
# real work gets its own ``advance`` instead.
CLAIMED_THROUGH = Status.START
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


def preview_data_url(image: Image.Image) -> str:
    """A step preview as a small JPEG data URL, for the ``preview`` field of progress frames."""
    small = image.convert("RGB")
    small.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def progress_message(step: int, total: int, started: float, now: float) -> dict[str, str]:
    """The protocol's ``progressGenerate`` object for a ``task_output`` frame."""
    elapsed = max(now - started, 1e-9)
    speed = step / elapsed
    remaining = (total - step) / speed if speed else 0.0
    return {
        "type": "progressGenerate",
        "task": "Generate",
        "percentage": str(round(100 * step / total)),
        "stepCurrent": str(step),
        "stepTotal": str(total),
        "speed": f"{speed:.2f}",
        "speedType": "it/s",
        "elapsedTime": f"{round(elapsed)}s",
        "remainingTime": f"{round(remaining)}s",
    }


class Worker:
    def __init__(
        self,
        worker_id: str,
        store: TaskStore,
        models: dict[str, ServedModel],
        storage: Storage,
        events: EventBus,
        lease_seconds: float,
        previews: bool = False,
    ):
        self.worker_id = worker_id
        self.store = store
        self.models = models
        self.storage = storage
        self.events = events
        self.lease_seconds = lease_seconds
        self.previews = previews
        self._running: set[int] = set()
        self._killed: set[int] = set()
        events.subscribe(self._notice_kill)

    def _notice_kill(self, event: TaskEvent) -> None:
        """Kill and Cancel publish ``task_cancel`` after changing the row: the running generation
        learns of it at its next step without asking the database."""
        if event.type == Status.CANCEL.value and event.task_id in self._running:
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
        log_lines: list[str] = []
        saved: list[NewOutput] = []
        try:
            self._run(task, log_lines, saved)
        except TaskStopped:
            self._discard(saved)
            killed = task.id in self._killed
            log_lines.append("Stopped by Kill." if killed else "Stopped: this worker no longer holds the task.")
            self.store.set_debug_output(task.id, "\n".join(log_lines))
            log.info("task %s stopped while running", task.id)
        except Exception as error:  # the task fails; the worker goes on with the next one
            self._discard(saved)
            log.exception("task %s failed", task.id)
            reason = f"{type(error).__name__}: {error}"
            if self.store.fail(task.id, reason, "\n".join(log_lines)):
                self._emit(task, Status.ERROR_FULL, {"raw": reason})
                self._emit(task, Status.POSTPROCESS_END)

    def _run(self, task: ClaimedTask, log_lines: list[str], saved: list[NewOutput]) -> None:
        model = self.models[task.model_slug]
        if model.engine is None:
            raise RuntimeError(f"model {model.slug} could not be loaded: {model.load_error}")
        request = GenerationRequest(
            prompt=task.request["prompt"],
            width=task.request["width"],
            height=task.request["height"],
            seed=task.request["seed"],
            steps=model.settings.steps,
            guidance=model.settings.guidance,
        )
        if task.request.get("prompt_upsampling"):
            log_lines.append("Prompt upsampling is not available on this server: prompt used as given.")
        log_lines.append(
            f"model {task.model_slug}: {model.engine.description}; seed {request.seed}, "
            f"{request.width}x{request.height}, {request.steps} steps, guidance {request.guidance}"
        )

        started = last_renewal = time.monotonic()

        def on_step(step: int, total: int, preview: Preview | None) -> None:
            nonlocal last_renewal
            now = time.monotonic()
            stopped = task.id in self._killed
            if not stopped and now - last_renewal > self.lease_seconds / 4:
                # Also how a kill is seen when the event came through no bus we listen to.
                stopped = not self.store.renew_lease(task.id, self.worker_id, self.lease_seconds)
                last_renewal = now
            if stopped:
                log_lines.append(f"Stopped at step {step} of {total}.")
                raise TaskStopped
            message = progress_message(step, total, started, now)
            picture = self._preview(preview) if self.previews and preview else None
            self.events.publish(TaskEvent(task.id, task.socket_token, Status.OUTPUT.value, message, picture))

        images = model.engine.generate(request, on_step)
        log_lines.append(f"Generated {len(images)} image(s) in {time.monotonic() - started:.2f}s.")
        self._emit(task, Status.OUTPUT_FULL, {"raw": "\n".join(log_lines)})
        self._advance(task, Status.END, Status.POSTPROCESS_START)

        output_format = task.request["output_format"]
        metadata = {
            "model": task.model_slug,
            "prompt": request.prompt,
            "seed": request.seed,
            "width": request.width,
            "height": request.height,
            "steps": request.steps,
            "guidance": request.guidance,
            "aspectRatio": task.request["aspect_ratio"],
            "engine": model.engine.description,
        }
        folder = self.storage.new_folder()
        for index, image in enumerate(images):
            data = encode(image, output_format, metadata)
            name = f"{index}.{FILE_EXTENSIONS[output_format]}"
            self.storage.save(folder, name, data)
            saved.append(NewOutput(name, CONTENT_TYPES[output_format], len(data), folder))
        if not self.store.finish(task.id, saved, "\n".join(log_lines)):
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

    def _emit(self, task: ClaimedTask, status: Status, message: object = None) -> None:
        self.events.publish(TaskEvent(task.id, task.socket_token, status.value, message))

    def _discard(self, saved: list[NewOutput]) -> None:
        for output in saved:
            self.storage.delete(output.folder, output.name)
