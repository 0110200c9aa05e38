"""The engine contract: loaded once and kept warm, then ``generate(request, on_step)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from PIL.Image import Image

Preview = Callable[[], Image]
"""Renders the image as it stands after a step: small and approximate, for progress displays."""

StepCallback = Callable[[int, int, Preview | None], None]
"""Called after every denoising step with (step done, 1-based; total steps; a preview renderer
or None where the engine has none). It may raise to stop the generation: that is how Kill stops
a running task at the next step."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    width: int
    height: int
    seed: int
    steps: int
    guidance: float


class Engine(Protocol):
    """Turns validated requests into images. ``generate`` may be called from several threads;
    an engine that cannot run two generations at once serialises them itself."""

    description: str  # what it serves, for the start-up banner and the task log

    def load(self) -> None: ...

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image]: ...
