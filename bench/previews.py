"""What step previews cost on the shipped demo model: seconds per image with and without a preview
decoded and JPEG-encoded at every step (as the worker does for progress frames when previews are
on), at a square and a wide aspect ratio, one image per call.

    python bench/previews.py [--images 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import time

from fluxhost.demo import demo_model_settings
from fluxhost.demo.scenes import held_out_captions
from fluxhost.engines.base import GenerationRequest
from fluxhost.engines.flux import FluxEngine
from fluxhost.orders import size_for_aspect_ratio
from fluxhost.runtime.outputs import preview_data_url


def seconds_per_image(engine: FluxEngine, prompts: list[str], width: int, height: int, previews: bool) -> float:
    model = engine.model

    def on_step(_index: int, _step: int, _total: int, preview) -> bool:
        if previews and preview is not None:
            preview_data_url(preview())
        return True

    started = time.perf_counter()
    for seed, prompt in enumerate(prompts):
        request = GenerationRequest(prompt, width, height, seed, model.steps, model.guidance)
        for images in engine.generate_batch([request], lambda: None, on_step):
            images[0].save(io.BytesIO(), format="PNG")
    return (time.perf_counter() - started) / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    import torch  # here: the fluxhost imports above set torch's OpenMP wait policy before it loads

    torch.set_num_threads(arguments.threads)
    model = demo_model_settings()
    engine = FluxEngine(model.weights, model)
    engine.load()
    prompts = [str(caption) for caption in held_out_captions()[: arguments.images]]
    seconds_per_image(engine, prompts[:1], 1024, 1024, True)  # warm-up
    print(f"demo model, {model.steps} steps, {arguments.threads} torch threads, {len(prompts)} images each")
    print(f"{'aspect':>6} {'size':>10} {'s/image':>8} {'previews':>9} {'cost':>6}")
    for ratio in ("1:1", "16:9"):
        width, height = size_for_aspect_ratio(ratio)
        without = seconds_per_image(engine, prompts, width, height, False)
        with_previews = seconds_per_image(engine, prompts, width, height, True)
        print(f"{ratio:>6} {f'{width}x{height}':>10} {without:>8.3f} {with_previews:>9.3f} "
              f"{(with_previews / without - 1) * 100:>5.1f}%")


if __name__ == "__main__":
    main()
