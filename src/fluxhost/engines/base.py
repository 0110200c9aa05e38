"""The engine contract: loaded once and kept warm, then ``generate(request, on_start, on_step)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from PIL.Image import Image

Preview = Callable[[], Image]
"""Renders the image as it stands after a step: small and approximate, for progress displays."""

StepCallback = Callable[[int, int, Preview | None], bool]
"""Called after every denoising step with (steps done, 1-based; total steps, as the pipeline
counts them; a preview renderer or None where the engine has none). It returns True to go on and
False to stop: the engine then interrupts the pipeline the library's own way, so the library's
cleanup (offload hooks and the like) still runs, and raises :class:`GenerationStopped`."""

StartCallback = Callable[[], None]
"""Called once the generation really starts, after any wait for the model to be free."""


class GenerationStopped(Exception):
    """The step callback asked to stop; the pipeline was interrupted and nothing is returned."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    width: int
    height: int
    seed: int  # image i of the request uses seed + i
    steps: int
    guidance: float
    num_images: int = 1
    images: tuple[Image, ...] = ()  # input images, for models that edit or take references


class Engine(Protocol):
    """Turns requests into images. ``generate`` may be called from several threads; an engine that
    cannot run two generations at once serialises them itself (and calls ``on_start`` only once
    the generation's turn has come)."""

    description: str  # what it serves, for the start-up banner and the task log

    def load(self) -> None: ...

    def generate(self, request: GenerationRequest, on_start: StartCallback, on_step: StepCallback) -> list[Image]: ...
