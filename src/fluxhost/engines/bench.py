"""A near-zero-cost engine for load tests: a small solid-colour image per request.

Never a default: ``FLUXHOST_ENGINE=bench`` swaps it in for every model, so that a load test
measures the service (HTTP, auth, store, worker, files) and not the GPU.
"""

from __future__ import annotations

from PIL import Image

from fluxhost.engines.base import GenerationRequest, StepCallback

BENCH_SIZE = 64


class BenchEngine:
    description = "bench engine (solid colour, for load tests only)"

    def load(self) -> None:
        pass

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        colour = (request.seed & 0xFF, (request.seed >> 8) & 0xFF, (request.seed >> 16) & 0xFF)
        image = Image.new("RGB", (BENCH_SIZE, BENCH_SIZE), colour)
        on_step(1, 1, lambda: image)
        return [image]
