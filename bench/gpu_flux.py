"""Seconds per image and peak GPU memory for one FLUX model, plain and with each engine option: a
table to paste. Runs wherever CUDA is (and on a CPU with the tiny model, to check the script).

    python bench/gpu_flux.py --preset schnell            # FLUX.1 [schnell], 4 steps
    python bench/gpu_flux.py --preset dev                # FLUX.1 [dev], 28 steps
    python bench/gpu_flux.py --weights /models/flux --steps 28 --guidance 3.5
    python bench/gpu_flux.py --weights tiny --device cpu --size 256 --images 2   # the script itself, on a CPU

Each row loads the model afresh with its options, makes one warm-up image (compilation happens
there), then times ``--images`` images at ``--size`` squared; "batch 4" times four images in one
call and reports seconds per image. Targets on one H100: schnell at most 0.6 s, dev at most 3.0 s
without step caching and at most 2.0 s with FirstBlockCache.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from fluxhost.engines.base import GenerationRequest
from fluxhost.engines.flux import FluxEngine
from fluxhost.models import PRESETS
from fluxhost.settings import ModelSettings
from fluxhost.testing.tiny import ensure_tiny_pipeline

ROWS: list[tuple[str, dict[str, object], int]] = [
    ("plain (bf16 on a GPU)", {}, 1),
    ("compile", {"compile": True}, 1),
    ("fp8 (torchao)", {"quantize": "fp8"}, 1),
    ("compile + fp8", {"compile": True, "quantize": "fp8"}, 1),
    ("FirstBlockCache 0.08", {"cache": "first_block", "cache_threshold": 0.08}, 1),
    ("compile + fp8 + FirstBlockCache", {"compile": True, "quantize": "fp8", "cache": "first_block",
                                         "cache_threshold": 0.08}, 1),
    ("TaylorSeer", {"cache": "taylorseer"}, 1),
    ("model CPU offload", {"offload": "model"}, 1),
    ("group offload", {"offload": "group"}, 1),
    ("nf4 (bitsandbytes)", {"quantize": "nf4"}, 1),
    ("batch 4", {}, 4),
    ("compile + fp8, batch 4", {"compile": True, "quantize": "fp8"}, 4),
]


def measure(weights: str, model: ModelSettings, device: str, size: int, images: int, batch: int) -> tuple[float, float]:
    """(seconds per image, peak GPU GiB)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    engine = FluxEngine(weights, model, device=device)
    engine.load()
    requests = [GenerationRequest(f"a lighthouse on a cliff at dusk, study {n}", size, size, n, model.steps,
                                  model.guidance) for n in range(batch)]

    def call() -> None:
        engine.generate_batch(requests, lambda: None, lambda *_: True)
        if cuda:
            torch.cuda.synchronize()

    call()  # warm-up
    calls = max(1, images // batch)
    began = time.perf_counter()
    for _ in range(calls):
        call()
    seconds = (time.perf_counter() - began) / (calls * batch)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS))
    parser.add_argument("--weights", help="a diffusers folder or hub id; 'tiny' builds the random tiny model")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--only", help="comma-separated row names to run")
    args = parser.parse_args()
    if not (args.preset or args.weights):
        parser.error("give --preset or --weights")
    base = PRESETS[args.preset].model_settings("bench") if args.preset else ModelSettings(weights=args.weights)
    overrides = {k: v for k, v in {"steps": args.steps, "guidance": args.guidance}.items() if v is not None}
    base = base.model_copy(update={"prompt_cache": 0, **overrides})  # every image pays for its text encoding
    with tempfile.TemporaryDirectory() as folder:
        weights = base.weights
        if weights == "tiny":
            weights = str(ensure_tiny_pipeline(Path(folder) / "tiny"))
        rows = [row for row in ROWS if not args.only or row[0] in args.only.split(",")]
        print(f"{weights}, {args.size}x{args.size}, {base.steps} steps, guidance {base.guidance}, {args.device}"
              f" ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'})")
        print(f"| {'option':34} | s/image | peak GiB |")
        print(f"|{'-' * 36}|---------|----------|")
        for name, options, batch in rows:
            try:
                seconds, peak = measure(weights, base.model_copy(update=options), args.device, args.size,
                                        args.images, batch)
                print(f"| {name:34} | {seconds:7.3f} | {peak:8.2f} |", flush=True)
                gc.collect()  # the row's engine goes before the next one loads
            except Exception as error:  # an option this machine lacks (no torchao, no bitsandbytes...)
                print(f"| {name:34} | {'-':>7} | {'-':>8} |  {type(error).__name__}: {str(error)[:80]}", flush=True)


if __name__ == "__main__":
    main()
