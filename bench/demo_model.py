"""Seconds per image of the shipped demo model on this machine, at every aspect ratio of the tool
(about one megapixel each): drawn at the trained size, upscaled by its Swin2SR, PNG-encoded as
the service stores it; one image per call and four per batched call.

    python bench/demo_model.py [--images 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import time

from fluxhost.demo import demo_model_settings
from fluxhost.demo.scenes import held_out_captions
from fluxhost.engines.base import GenerationRequest
from fluxhost.engines.flux import FluxEngine
from fluxhost.orders import ASPECT_RATIOS, size_for_aspect_ratio


def seconds_per_image(engine: FluxEngine, prompts: list[str], width: int, height: int, batch: int) -> float:
    model = engine.model
    started = time.perf_counter()
    for first in range(0, len(prompts), batch):
        requests = [GenerationRequest(prompt, width, height, seed, model.steps, model.guidance)
                    for seed, prompt in enumerate(prompts[first : first + batch], start=first)]
        for images in engine.generate_batch(requests, lambda: None, lambda *_: True):
            images[0].save(io.BytesIO(), format="PNG")
    return (time.perf_counter() - started) / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    import torch  # here: the fluxhost imports above set torch's OpenMP wait policy before it loads

    torch.set_num_threads(arguments.threads)
    model = demo_model_settings()
    engine = FluxEngine(model.weights, model)
    started = time.perf_counter()
    engine.load()
    print(f"demo model loaded in {time.perf_counter() - started:.2f} s; {model.steps} steps, "
          f"{arguments.threads} torch threads")
    prompts = [str(caption) for caption in held_out_captions()[: arguments.images]]
    seconds_per_image(engine, prompts[:1], 1024, 1024, 1)  # warm-up
    print(f"{'aspect':>6} {'size':>10} {'s/image alone':>14} {'s/image in 4s':>14}")
    for ratio in ASPECT_RATIOS:
        width, height = size_for_aspect_ratio(ratio)
        alone = seconds_per_image(engine, prompts, width, height, 1)
        batched = seconds_per_image(engine, prompts, width, height, 4)
        print(f"{ratio:>6} {f'{width}x{height}':>10} {alone:>14.2f} {batched:>14.2f}")


if __name__ == "__main__":
    main()
