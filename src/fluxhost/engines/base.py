"""The engine contract: loaded once and kept warm, then ``generate_batch(requests, on_start, on_step)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

BatchStepCallback = Callable[[int, int, int, Preview | None], bool]
"""The batch form of :data:`StepCallback`: (index of the request in the batch, steps done, total,
preview of that request's image). False drops that request: its images are not returned (None in
its place); when every request is dropped the pipeline is interrupted and
:class:`GenerationStopped` is raised."""

StartCallback = Callable[[], None]
"""Called once the generation really starts, after any wait for the model to be free."""


class GenerationStopped(Exception):
    """The step callback asked to stop; the pipeline was interrupted and nothing is returned."""


class WeightsUnavailable(RuntimeError):
    """The weights could not be loaded: ``weights`` names them, ``reason`` says why (the first line
    of the loader's error). What to do about it is the caller's to say: it knows where the
    weights were configured."""

    def __init__(self, weights: str, reason: str):
        super().__init__(f"weights {weights!r} could not be loaded ({reason})")
        self.weights = weights
        self.reason = reason


class KindUnsupported(ValueError):
    """The weights load, but their pipeline cannot do what the model's ``kind`` asks (edit images)."""


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter for one generation: a local .safetensors file, the sha256 (hex) of its bytes,
    which identifies it for the engine's cache and for batching, and how strongly it applies."""

    path: str
    digest: str
    weight: float = 1.0


@dataclass(frozen=True)
class ControlSettings:
    """How a ControlNet steers the generation; the defaults are diffusers' own."""

    conditioning_scale: float = 1.0  # how strongly the control image pulls
    guidance_start: float = 0.0  # the fraction of the steps where the ControlNet starts to act
    guidance_end: float = 1.0  # and where it stops


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
    strength: float | None = None  # image-to-image: how far from the input image to go
    control: ControlSettings | None = None  # ControlNet engines: how images[0] steers the generation
    adapters: tuple[Adapter, ...] = ()  # LoRA adapters, applied together, each at its own weight


class Engine(Protocol):
    """Turns requests into images. ``generate_batch`` may be called from several threads; an engine
    that cannot run two generations at once serialises them itself (and calls ``on_start`` only
    once the generation's turn has come). Requests of one batch share size, steps and guidance."""

    description: str  # what it serves, for the start-up banner and the task log
    batches: int  # pipeline calls made so far: a batch of four is one
    kinds: frozenset[str]  # the model kinds (settings' ``kind``) it serves once loaded

    def load(self) -> None: ...

    def generate_batch(self, requests: Sequence[GenerationRequest], on_start: StartCallback,
                       on_step: BatchStepCallback) -> list[list[Image] | None]: ...


def generate(engine: Engine, request: GenerationRequest, on_start: StartCallback, on_step: StepCallback) -> list[Image]:
    """One request on its own."""
    def on_batch_step(_index: int, step: int, total: int, preview: Preview | None) -> bool:
        return on_step(step, total, preview)

    [images] = engine.generate_batch([request], on_start, on_batch_step)
    if images is None:
        raise GenerationStopped
    return images


def batch_key(request: GenerationRequest) -> tuple[object, ...]:
    """Requests with equal keys can share a pipeline call: a call applies one set of adapters."""
    adapters = tuple((adapter.digest, adapter.weight) for adapter in request.adapters)
    return request.width, request.height, request.steps, request.guidance, bool(request.images), adapters
