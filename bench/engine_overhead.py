"""Seconds per image through the whole service versus calling the same pipeline directly.

`--model tiny` (the default): both sides use the tiny random-weight FLUX pipeline, the same size
(16:9, which the service renders at 1376x768), the same steps and the same torch thread count. The direct side is timed
twice: the bare pipeline call, and the call plus the PNG encoding any caller needs to keep the
image. The service side is one client doing Run then Detail polling, one image at a time; its
time is the task's own ``elapsedseconds`` (creation to task_postprocess_end, to the 0.1 ms), and
polls are spaced 200 ms apart so that the client does not take CPU from the generation it times.

`--model demo`: the demo model `make serve` serves, its engine built as the worker builds it and
called here, against `fluxhost serve` on its defaults (a worker process); each side's CPU seconds
(this process; the server and its worker child) and wall seconds per 1024x1024 picture, PNG
encoding included on both. Run it with OMP_WAIT_POLICY=ACTIVE to see what torch's spinning
threads cost (fluxhost waits passively unless told otherwise).

    python bench/engine_overhead.py [--model tiny|demo] [--images 8] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from _server import SLUG, Signer, cpu_seconds, running_server, wait_for_task
from fluxhost.demo import EXAMPLE_PROMPT, GUIDANCE, STEPS, demo_model_settings
from fluxhost.engines.base import GenerationRequest
from fluxhost.orders import size_for_aspect_ratio
from fluxhost.runtime.host import build_engine
from fluxhost.settings import Settings
from fluxhost.testing.tiny import ensure_tiny_pipeline

PROMPT = "a lighthouse on a cliff at dusk"


def direct(weights: Path, images: int, steps: int, width: int, height: int) -> tuple[float, float]:
    import torch
    from diffusers import FluxPipeline

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
                return float(wait_for_task(http, signer, token, 0.2)["elapsedseconds"])

            one(0)  # warm-up
            return sum(one(seed) for seed in range(images)) / images


def demo_alone(images: int, width: int, height: int) -> tuple[float, float]:
    """CPU and wall seconds per picture of the demo engine called in this process."""
    engine = build_engine(demo_model_settings(), Settings(), "cpu")
    engine.load()

    def generate(seed: int) -> None:
        request = GenerationRequest(EXAMPLE_PROMPT, width, height, seed, STEPS, GUIDANCE)
        [[image]] = engine.generate_batch([request], lambda: None, lambda *_: True)
        image.save(io.BytesIO(), format="PNG")

    generate(0)  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    for seed in range(1, images + 1):
        generate(seed)
    return (time.process_time() - cpu) / images, (time.perf_counter() - wall) / images


def service_cpu_seconds() -> float:
    """CPU seconds so far of this process's children: the server and its worker process."""
    return cpu_seconds(psutil.Process(), with_root=False)


def demo_through_service(images: int, threads: int) -> tuple[float, float]:
    """CPU and wall seconds per picture of `fluxhost serve` on its defaults, one Run at a time."""
    with running_server(8798, torch_threads=str(threads)) as (base_url, key):
        signer = Signer(key)
        with httpx.Client(base_url=base_url, timeout=120) as http:

            def generate(seed: int) -> None:
                body = {"prompt": EXAMPLE_PROMPT, "aspectRatio": "1:1", "seed": str(seed)}  # PNG, the default
                token = http.post(f"/v1/Run/{SLUG}", json=body, headers=signer.headers()).json()["socketaccesstoken"]
                wait_for_task(http, signer, token, 0.2)

            generate(0)  # warm-up
            cpu, wall = service_cpu_seconds(), time.perf_counter()
            for seed in range(1, images + 1):
                generate(seed)
            return (service_cpu_seconds() - cpu) / images, (time.perf_counter() - wall) / images


def demo(images: int, threads: int) -> None:
    width, height = size_for_aspect_ratio("1:1")
    alone_cpu, alone_wall = demo_alone(images, width, height)
    service_cpu, service_wall = demo_through_service(images, threads)
    print(f"demo model, {width}x{height}, {STEPS} steps, {threads} torch threads, {images} images, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"  engine alone + PNG      {alone_cpu:7.3f} CPU s/image  {alone_wall:7.3f} wall s/image")
    print(f"  fluxhost, Run to done   {service_cpu:7.3f} CPU s/image  {service_wall:7.3f} wall s/image")
    print(f"  service / engine alone  {service_cpu / alone_cpu:7.3f} CPU         "
          f" {service_wall / alone_wall:7.3f} wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "demo"], default="tiny")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="the tiny model's steps (the demo runs its own)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch  # here, not above: fluxhost's imports set torch's OpenMP wait policy before it loads

    torch.set_num_threads(args.threads)
    if args.model == "demo":
        demo(args.images, args.threads)
        return
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
