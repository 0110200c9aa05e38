"""One claim of a training task: its pictures read, the engine's trainer run with a progress frame
per step, and what it makes kept in the training's folder of the file store.

The training's folder is named at Run and stays the same for every claim of the task, unlike a
run's output folder: a worker that takes the task up after another died finds there the newest
checkpoint (through ``checkpoints.json``, written after the files it names) and goes on from its
step; the samples drawn before are listed there too. A training resumed from an earlier task
(``resume``) starts from that task's newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from PIL import Image

from fluxhost.engines.base import KindUnsupported
from fluxhost.engines.training import (
    Checkpoint,
    Trainer,
    TrainingExample,
    TrainingPlan,
    TrainingProgress,
)
from fluxhost.events import EventBus, Progress, TaskEvent
from fluxhost.input_images import ImageLimits, decode
from fluxhost.loras import SAFETENSORS_TYPE
from fluxhost.orders import Training
from fluxhost.runtime.outputs import OutputNotStored, encode, storage_problem
from fluxhost.statuses import Status
from fluxhost.storage import FileStore
from fluxhost.store.work import ClaimedTask, NewOutput

log = logging.getLogger(__name__)

MANIFEST = "checkpoints.json"
STATE_TYPE = "application/octet-stream"


@dataclass
class Manifest:
    """What a training's folder holds, newest checkpoint last."""

    adapters: list[str] = field(default_factory=list)  # kept checkpoints' adapter files, oldest first
    state: str = ""  # the newest checkpoint's resume state
    step: int = 0  # the newest checkpoint's step
    samples: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of each file named above

    @classmethod
    def read(cls, files: FileStore, folder: str) -> Manifest | None:
        data = files.read(folder, MANIFEST)
        return None if data is None else cls(**json.loads(data))


def caption_of(text: str, trigger_word: str) -> str:
    """The caption trained on: ``[trigger]`` replaced by the trigger word, which leads a caption
    that does not name it (ai-toolkit's convention); an empty caption is the trigger word alone."""
    text = " ".join(text.split())
    if not trigger_word:
        return text.replace("[trigger]", "").strip()
    if "[trigger]" in text:
        return text.replace("[trigger]", trigger_word)
    if trigger_word in text.split(" "):
        return text
    return f"{trigger_word}, {text}" if text else trigger_word


def plan_of(training: Training, seed: int) -> TrainingPlan:
    return TrainingPlan(
        steps=training.steps, learning_rate=training.learning_rate, rank=training.rank,
        batch_size=training.batch_size, resolution=training.resolution, seed=seed,
        gradient_accumulation=training.gradient_accumulation,
        gradient_checkpointing=training.gradient_checkpointing, caption_dropout=training.caption_dropout,
        optimizer=training.optimizer, guidance=training.guidance, save_every=training.save_every,
        sample_every=training.sample_every,
        sample_prompts=tuple(caption_of(prompt, training.trigger_word) for prompt in training.sample_prompts),
    )


class TrainingEngine:
    """The engine of a training model: its weights loaded, a copy of their own, when a training
    starts and let go when it ends, so a server that also draws with these weights keeps drawing
    while it trains, and holds the second copy only then."""

    kinds = frozenset({"train"})
    batches = 0

    def __init__(self, build: Callable[[], object], description: str):
        """``build``: a new, unloaded engine of the weights (one that trains: FLUX.1)."""
        self.build = build
        self.description = f"{description}, loaded for each training"

    def load(self) -> None:
        """Nothing until a training comes."""

    def generate_batch(self, requests, on_start, on_step):
        raise KindUnsupported("a training model draws no pictures: give its adapter to a LoRA tool")

    def train(self, plan: TrainingPlan, examples: list[TrainingExample], resume: Checkpoint | None,
              progress: TrainingProgress) -> Checkpoint:
        engine = self.build()
        engine.load()
        if "train" not in engine.kinds:
            raise KindUnsupported(f"{engine.description} cannot train LoRA adapters (FLUX.1 weights, neither "
                                  "compiled nor quantized but to nf4, can)")
        return engine.train(plan, examples, resume, progress)


class TrainingRun:
    """Takes one claimed training task through the trainer. ``keep_going()``: False once the task
    is no longer this run's (killed, the lease lost, the worker halting); ``screen(picture)``:
    the moderation category of a sample picture, None when it may be kept; ``holds()``: False once
    another worker may have taken the task over (the lease lost): nothing more is written to its
    folder, which that worker resumes from."""

    def __init__(self, task: ClaimedTask, files: FileStore, events: EventBus, lines: list[str],
                 keep_going: Callable[[], bool], screen: Callable[[Image.Image], str | None],
                 holds: Callable[[], bool] = lambda: True):
        self.task = task
        self.holds = holds
        self.screen = screen
        self.training: Training = task.order.training
        self.files = files
        self.events = events
        self.lines = lines
        self.keep_going = keep_going
        self.folder = self.training.checkpoints_folder
        self.manifest = Manifest.read(files, self.folder) or Manifest()
        self._started = time.monotonic()
        self._first_step = 0

    def run(self, trainer: Trainer) -> Checkpoint:
        """The final checkpoint; :class:`~fluxhost.engines.training.TrainingStopped` when stopped."""
        examples = self._examples()
        resume = self._resume()
        self._first_step = resume.step if resume else 0
        plan = plan_of(self.training, self.task.order.seed)
        self.lines.append(f"Training a rank-{plan.rank} LoRA on {len(examples)} picture(s) at {plan.resolution} px: "
                          f"{plan.steps} steps of {plan.batch_size}, learning rate {plan.learning_rate:g}, "
                          f"{plan.optimizer}, seed {plan.seed}.")
        if resume:
            self.lines.append(f"Resumed from the checkpoint of step {resume.step}.")
        self._started = time.monotonic()
        final = trainer.train(plan, examples, resume, self)
        seconds = time.monotonic() - self._started
        done = final.step - self._first_step
        self.lines.append(f"Trained {done} step(s) in {seconds:.1f}s ({done / max(seconds, 1e-9):.2f} it/s).")
        return final

    def outputs(self) -> list[NewOutput]:
        """What the training has kept: its sample pictures, then its checkpoints' adapters."""
        return [self._output(name, "image/png") for name in self.manifest.samples] + [
            self._output(name, SAFETENSORS_TYPE) for name in self.manifest.adapters]

    # --- the trainer's progress callbacks ------------------------------------------------

    def step(self, step: int, total: int, loss: float) -> bool:
        if not self.keep_going():
            self.lines.append(f"Stopped at step {step} of {total}.")
            return False
        progress = Progress.measure(step, total, time.monotonic() - self._started, self._first_step, loss)
        self.events.publish(TaskEvent(self.task.id, self.task.socket_token, Status.OUTPUT, progress=progress))
        return True

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        if not self.holds():
            self.lines.append(f"The checkpoint of step {checkpoint.step} is not kept: the task is no longer this "
                              "worker's.")
            return
        adapter, state = f"adapter-{checkpoint.step:06d}.safetensors", f"state-{checkpoint.step:06d}.pt"
        self._save(adapter, checkpoint.adapter)
        self._save(state, checkpoint.state)
        dropped = [name for name in self.manifest.adapters if name != adapter]
        kept = [*dropped, adapter][-self.training.keep_checkpoints:]
        stale = [name for name in dropped if name not in kept]
        if self.manifest.state and self.manifest.state != state:
            stale.append(self.manifest.state)
        sizes = {name: size for name, size in self.manifest.sizes.items() if name not in stale}
        self.manifest = Manifest(kept, state, checkpoint.step, self.manifest.samples,
                                 sizes | {adapter: len(checkpoint.adapter), state: len(checkpoint.state)})
        self._save(MANIFEST, json.dumps(asdict(self.manifest)).encode())
        for name in stale:
            try:
                self.files.delete(self.folder, name)
            except Exception as error:  # left behind: the manifest no longer names it
                log.warning("an old checkpoint file could not be removed: %s", storage_problem(error))

    def samples(self, step: int, images: list[Image.Image]) -> None:
        if not self.holds():
            return
        names = []
        prompts = self.training.sample_prompts
        for number, image in enumerate(images, start=1):
            if category := self.screen(image):  # the training goes on: its adapter is what it makes
                self.lines.append(f"Step {step}: sample picture {number} withheld (Content Moderated: {category}).")
                continue
            name = f"sample-{step:06d}-{number}.png"
            data = encode(image, "png", {"model": self.task.model_slug, "step": step,
                                         "prompt": prompts[(number - 1) % len(prompts)]})
            self._save(name, data)
            self.manifest.sizes[name] = len(data)
            names.append(name)
        self.manifest.samples = list(dict.fromkeys([*self.manifest.samples, *names]))  # a step drawn again
        self._save(MANIFEST, json.dumps(asdict(self.manifest)).encode())
        if names:
            self.lines.append(f"Step {step}: {len(names)} sample picture(s).")

    # --- helpers ---------------------------------------------------------------------------

    def _examples(self) -> list[TrainingExample]:
        examples = []
        for picture in self.training.images:
            data = self.files.read(picture.file.folder, picture.file.name)
            if data is None:
                raise RuntimeError(f"the training picture {picture.file.name} is no longer stored (deleted?)")
            image = decode(data, ImageLimits(max_bytes=len(data), max_pixels=2**31)).image
            examples.append(TrainingExample(image, caption_of(picture.caption, self.training.trigger_word)))
        return examples

    def _resume(self) -> Checkpoint | None:
        """The newest checkpoint of this training (a claim before this one made it), else of the
        training it resumes."""
        if self.manifest.state:
            return self._checkpoint_in(self.folder, self.manifest)
        if self.training.resume:
            earlier = Manifest.read(self.files, self.training.resume)
            if earlier is None or not earlier.state:
                raise RuntimeError("the training to resume from has no checkpoint left")
            return self._checkpoint_in(self.training.resume, earlier)
        return None

    def _checkpoint_in(self, folder: str, manifest: Manifest) -> Checkpoint:
        adapter = self.files.read(folder, manifest.adapters[-1]) if manifest.adapters else None
        state = self.files.read(folder, manifest.state)
        if adapter is None or state is None:
            raise RuntimeError(f"the checkpoint of step {manifest.step} is no longer stored")
        return Checkpoint(manifest.step, adapter, state)

    def _save(self, name: str, data: bytes) -> None:
        try:
            self.files.save(self.folder, name, data)
        except Exception as error:
            raise OutputNotStored(f"the training's {name} could not be stored ({storage_problem(error)})") from error

    def _output(self, name: str, content_type: str) -> NewOutput:
        return NewOutput(name, content_type, self.manifest.sizes.get(name, 0), self.folder)
