"""The training contract: an engine that serves ``kind="train"`` trains a LoRA adapter on its own
loaded weights with ``train(plan, examples, resume, progress)``, reporting each step, handing
over checkpoints and sample pictures as it goes, and stopping when asked.

A checkpoint is everything needed to go on exactly where it was made: the adapter (a diffusers
LoRA ``.safetensors``, usable as it is) and the optimizer's state with the step reached. The
order of the pictures, the noise and the caption dropout of step ``n`` are drawn from the seed
and ``n`` alone, so a run resumed from step ``n`` goes on as if it had never stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from PIL.Image import Image

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TrainingExample:
    image: Image
    caption: str  # as it is trained on: the trigger word already in it


@dataclass(frozen=True)
class TrainingPlan:
    steps: int  # optimizer steps in all
    learning_rate: float
    rank: int
    batch_size: int
    resolution: int  # pictures are trained on at about resolution x resolution pixels
    seed: int
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    caption_dropout: float = 0.05  # the share of captions trained on as empty (keeps the model usable without)
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = "adamw"
    guidance: float = 1.0  # what a guidance-distilled transformer is told while it learns
    save_every: int = 0  # steps between checkpoints (0: only at the end or when stopped)
    sample_every: int = 0  # steps between sample pictures (0: only at the end)
    sample_prompts: tuple[str, ...] = ()  # none: no samples


WARMUP_STEPS = 20  # at most; a tenth of a shorter training


def learning_rate_scale(step: int, steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps``, as a share of the one asked for:
    up linearly over the warm-up, then down to zero along a cosine."""
    warmup = max(1, min(WARMUP_STEPS, steps // 10))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@dataclass(frozen=True)
class Checkpoint:
    step: int
    adapter: bytes  # the LoRA as a diffusers .safetensors file
    state: bytes  # what resuming needs besides the adapter (the optimizer's moments)


class TrainingStopped(Exception):
    """The progress callback asked to stop; the checkpoint of the step reached was handed over first."""

    def __init__(self, checkpoint: Checkpoint):
        super().__init__(f"stopped at step {checkpoint.step}")
        self.checkpoint = checkpoint


class TrainingProgress(Protocol):
    """What a trainer reports to whoever runs it."""

    def step(self, step: int, total: int, loss: float) -> bool:
        """After each optimizer step (1-based); False: stop now (a kill, a worker shutting down)."""

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep a checkpoint (every ``save_every`` steps, at a stop and at the end)."""

    def samples(self, step: int, images: list[Image]) -> None:
        """Keep the sample pictures drawn with the adapter as it is at ``step``."""


class PictureReader(Protocol):
    """Reads a model's latents from pictures where its VAE encoder cannot be trusted with them (the
    demo model's, trained on its own scenes only: see :mod:`fluxhost.demo.pictures`): training
    pictures, and pictures to edit."""

    def read(self, image: Image) -> tuple[torch.Tensor, torch.Tensor]:
        """The picture's latents, (channels, height / 8, width / 8), unscaled as the VAE's would be;
        and each transformer token's weight in the loss, (tokens,), as the model was trained."""

    def reference(self, image: Image, width: int, height: int) -> torch.Tensor:
        """The latents, (channels, height / 8, width / 8), unscaled, of a picture to edit or redraw
        at ``width`` x ``height``, as the model's editor learned its references."""


class Trainer(Protocol):
    def train(self, plan: TrainingPlan, examples: list[TrainingExample], resume: Checkpoint | None,
              progress: TrainingProgress) -> Checkpoint:
        """Train from ``resume`` (or from scratch) to ``plan.steps``; the final checkpoint.
        :class:`TrainingStopped` when ``progress`` asked to stop."""
