"""A near-zero-cost engine for load tests: a small solid-colour image per requested image.

Never a default: ``FLUXHOST_ENGINE=bench`` swaps it in for every model, so that a load test
measures the service (HTTP, auth, store, worker, files) and not the GPU.
"""

from __future__ import annotations

from PIL import Image

from fluxhost.engines.base import GenerationRequest, GenerationStopped, StartCallback, StepCallback

BENCH_SIZE = 64


class BenchEngine:
    description = "bench engine (solid colour, for load tests only)"

    def load(self) -> None:
        pass

    def generate(self, request: GenerationRequest, on_start: StartCallback, on_step: StepCallback) -> list[Image.Image]:
        on_start()
        images = []
        for index in range(request.num_images):
            seed = request.seed + index
            colour = (seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF)
            images.append(Image.new("RGB", (BENCH_SIZE, BENCH_SIZE), colour))
        if not on_step(1, 1, lambda: images[0]):
            raise GenerationStopped
        return images
