"""Seconds per image through the whole service versus calling the same diffusers pipeline directly.

Both sides use the tiny random-weight FLUX pipeline, the same size (16:9, which the service
renders at 1376x768), the same steps and the same torch thread count. The direct side is timed
twice: the bare pipeline call, and the call plus the PNG encoding any caller needs to keep the
image. The service side is one client doing Run then Detail polling, one image at a time; its
time is the task's own ``elapsedseconds`` (creation to task_postprocess_end, to the 0.1 ms), and
polls are spaced 200 ms apart so that the client does not take CPU from the generation it times.

    python bench/engine_overhead.py [--images 8] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import httpx
import torch
from diffusers import FluxPipeline

from _server import SLUG, Signer, running_server
from fluxhost.orders import size_for_aspect_ratio
from fluxhost.statuses import TERMINAL
from fluxhost.testing.tiny import ensure_tiny_pipeline

PROMPT = "a lighthouse on a cliff at dusk"


def direct(weights: Path, images: int, steps: int, width: int, height: int) -> tuple[float, float]:
    pipeline = FluxPipeline.from_pretrained(weights)
    pipeline.set_progress_bar_config(disable=True)

    def generate(seed: int):
        generator = torch.Generator("cpu").manual_seed(seed)
        return pipeline(PROMPT, width=width, height=height, num_inference_steps=steps, generator=generator,
                        max_sequence_length=64).images[0]

    generate(0)  # warm-up
    bare = encoded = 0.0
    for seed in range(images):
        began = time.perf_counter()
        image = generate(seed)
        generated = time.perf_counter()
        image.save(io.BytesIO(), format="PNG")
        bare += generated - began
        encoded += time.perf_counter() - began
    return bare / images, encoded / images


def through_service(weights: Path, images: int, steps: int, threads: int) -> float:
    models = json.dumps({SLUG: {"weights": str(weights), "steps": steps, "max_sequence_length": 64}})
    with running_server(8798, models=models, torch_threads=str(threads)) as (base_url, key):
        signer = Signer(key)
        with httpx.Client(base_url=base_url, timeout=120) as http:

            def one(seed: int) -> float:
                body = {"prompt": PROMPT, "aspectRatio": "16:9", "seed": str(seed)}
                token = http.post(f"/v1/Run/{SLUG}", json=body, headers=signer.headers()).json()["socketaccesstoken"]
                while True:
                    task = http.post("/v1/Task/Detail", json={"tasktoken": token},
                                     headers=signer.headers()).json()["tasklist"][0]
                    if task["status"] in TERMINAL:
                        assert task["pexit"] == "0", task["debugerror"]
                        return float(task["elapsedseconds"])
                    time.sleep(0.2)

            one(0)  # warm-up
            return sum(one(seed) for seed in range(images)) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width, height = size_for_aspect_ratio("16:9")
    with tempfile.TemporaryDirectory() as folder:
        weights = ensure_tiny_pipeline(Path(folder) / "tiny")
        bare, encoded = direct(weights, args.images, args.steps, width, height)
        service = through_service(weights, args.images, args.steps, args.threads)
    print(f"tiny FLUX, {width}x{height}, {args.steps} steps, {args.threads} torch threads, {args.images} images")
    print(f"  diffusers pipeline call          {bare:7.3f} s/image")
    print(f"  diffusers call + PNG encoding    {encoded:7.3f} s/image")
    print(f"  fluxhost, submit to done         {service:7.3f} s/image")
    print(f"  ratio service / (call + encode)  {service / encoded:7.3f}")
    print(f"  ratio service / call             {service / bare:7.3f}")


if __name__ == "__main__":
    main()
