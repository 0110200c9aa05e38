"""A near-zero-cost engine for load tests: a small solid-colour image per requested image.

Never a default: ``FLUXHOST_ENGINE=bench`` swaps it in for every model, so that a load test
measures the service (HTTP, auth, store, worker, files) and not the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from fluxhost.engines.base import BatchStepCallback, GenerationRequest, GenerationStopped, StartCallback

BENCH_SIZE = 64


class BenchEngine:
    description = "bench engine (solid colour, for load tests only)"

    def __init__(self) -> None:
        self.batches = 0

    def load(self) -> None:
        pass

    def generate_batch(self, requests: Sequence[GenerationRequest], on_start: StartCallback,
                       on_step: BatchStepCallback) -> list[list[Image.Image] | None]:
        on_start()
        self.batches += 1
        outputs: list[list[Image.Image] | None] = []
        for index, request in enumerate(requests):
            images = [Image.new("RGB", (BENCH_SIZE, BENCH_SIZE), _colour(request.seed + number))
                      for number in range(request.num_images)]
            outputs.append(images if on_step(index, 1, 1, lambda images=images: images[0]) else None)
        if all(output is None for output in outputs):
            raise GenerationStopped
        return outputs


def _colour(seed: int) -> tuple[int, int, int]:
    return seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF
