"""A near-zero-cost engine for load tests: a small solid-colour image per requested image.

Never a default: ``FLUXHOST_ENGINE=bench`` swaps it in for every model, so that a load test
measures the service (HTTP, auth, store, worker, files) and not the GPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from PIL import Image

from fluxhost.engines.base import BatchStepCallback, GenerationRequest, GenerationStopped, StartCallback

BENCH_SIZE = 64


class BenchEngine:
    """``step_seconds`` > 0: each task takes its request's steps, that long each (a batch shares
    them, as a pipeline call does); 0: one instant step."""

    description = "bench engine (solid colour, for load tests only)"
    kinds = frozenset({"text-to-image", "edit", "image-to-image", "upscale"})

    def __init__(self, step_seconds: float = 0.0) -> None:
        self.step_seconds = step_seconds
        self.batches = 0

    def load(self) -> None:
        pass

    def generate_batch(self, requests: Sequence[GenerationRequest], on_start: StartCallback,
                       on_step: BatchStepCallback) -> list[list[Image.Image] | None]:
        on_start()
        self.batches += 1
        images = [[Image.new("RGB", (BENCH_SIZE, BENCH_SIZE), _colour(request.seed + number))
                   for number in range(request.num_images)] for request in requests]
        running = set(range(len(requests)))
        total = max(request.steps for request in requests) if self.step_seconds else 1
        for step in range(1, total + 1):
            time.sleep(self.step_seconds)
            for index in sorted(running):
                if not on_step(index, step, total, lambda drawn=images[index]: drawn[0]):
                    running.discard(index)
            if not running:
                raise GenerationStopped
        return [images[index] if index in running else None for index in range(len(requests))]


def _colour(seed: int) -> tuple[int, int, int]:
    return seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF
