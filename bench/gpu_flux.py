"""Seconds per image and peak GPU memory for one FLUX model, plain and with each engine option: a
table to paste. Runs wherever CUDA is (and on a CPU with the tiny model, to check the script).

    python bench/gpu_flux.py --preset schnell            # FLUX.1 [schnell], 4 steps
    python bench/gpu_flux.py --preset dev                # FLUX.1 [dev], 28 steps
    python bench/gpu_flux.py --weights /models/flux --steps 28 --guidance 3.5
    python bench/gpu_flux.py --weights tiny --device cpu --size 256 --images 2   # the script itself, on a CPU
    python bench/gpu_flux.py --preset dev --upscale      # the upscaler: 512 -> 1024 with jasperai's ControlNet
    python bench/gpu_flux.py --case kontext-references   # FLUX.1 Kontext [dev] edits with 1, 2 and 3 images
    python bench/gpu_flux.py --preset dev --lora owner/repo:lora.safetensors     # adds the LoRA rows
    python bench/gpu_flux.py --case flux2-references     # FLUX.2 [dev] edits with 1, 2 and 3 reference images

Each row loads the model afresh with its options, makes one warm-up image (compilation happens
there), then times ``--images`` images at ``--size`` squared; "batch 4" times four images in one
call and reports seconds per image. Targets on one H100: schnell at most 0.6 s, dev at most 3.0 s
without step caching and at most 2.0 s with FirstBlockCache.

With ``--upscale`` there is one row instead: FLUX.1 [dev] with the upscaling ControlNet
jasperai/Flux.1-dev-Controlnet-Upscaler (a tiny random one with ``--weights tiny``) redrawing a
``--size``/2 picture at ``--size`` (twofold), at conditioning scale 0.6.

``--lora`` (a local .safetensors file, or ``owner/repo`` or ``owner/repo:file.safetensors`` on the
hub; ``tiny`` writes a random one for the tiny model; give it twice for two adapters) adds rows
where the images alternate between two adapters (one file given: the same file under a second
identity), plain and compiled: "swap ms" is one switch from the first adapter to the second, a
hotswap on the compiled model.

A reference case loads its model once and times one edit (``--images`` edits, after a warm-up)
with each number of input images: every reference adds its tokens to the transformer's sequence,
so the seconds grow with the count. FLUX.2 [dev] in bfloat16 is a 32B transformer and a 24B text
encoder, about 112 GB of weights by arithmetic: on a smaller GPU add ``--offload model``. The
cases need CUDA; ``--weights tiny --device cpu`` checks the script on the tiny pipelines.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import huggingface_hub
import numpy as np
import torch
from PIL import Image

from fluxhost.engines.base import Adapter, ControlSettings, Engine, GenerationRequest
from fluxhost.engines.flux import FluxEngine
from fluxhost.engines.upscaling import ControlNetUpscaleEngine
from fluxhost.models import PRESETS
from fluxhost.settings import ModelSettings
from fluxhost.testing.loras import adapter_of, write_lora
from fluxhost.testing.tiny import ensure_tiny_pipeline

UPSCALER = "jasperai/Flux.1-dev-Controlnet-Upscaler"

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


LORA_ROWS: list[tuple[str, dict[str, object], int]] = [
    ("LoRA (two alternating)", {}, 1),
    ("compile + LoRA (hotswap)", {"compile": True}, 1),
]


def lora_file(source: str, folder: Path) -> Path:
    """A local LoRA file for ``--lora``: a path, a hub repository (its one .safetensors file) or
    ``repo:file``, or ``tiny``."""
    if source == "tiny":
        seed = len(list(folder.glob("tiny-lora-*")))
        return write_lora(folder / f"tiny-lora-{seed}.safetensors", seed=seed)
    if Path(source).is_file():
        return Path(source)
    repo, _, filename = source.partition(":")
    if not filename:
        files = [name for name in huggingface_hub.list_repo_files(repo) if name.endswith(".safetensors")]
        if len(files) != 1:
            raise SystemExit(f"{repo} holds {len(files)} .safetensors files: name one as {repo}:FILE")
        filename = files[0]
    return Path(huggingface_hub.hf_hub_download(repo, filename))


def lora_pair(sources: list[str], folder: Path) -> tuple[Adapter, Adapter]:
    first = adapter_of(lora_file(sources[0], folder))
    if len(sources) > 1:
        return first, adapter_of(lora_file(sources[1], folder))
    return first, Adapter(first.path, first.digest[::-1])  # the same weights under a second identity


def measure(make_engine: Callable[[], Engine], batches: list[list[GenerationRequest]], device: str,
            images: int) -> tuple[float, float, float]:
    """(seconds per image, peak GPU GiB, milliseconds to swap from the first batch's adapters to
    the second's: nan without adapters) of calls cycling through ``batches`` on a freshly loaded
    engine."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    engine = make_engine()
    engine.load()

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    def call(number: int) -> None:
        engine.generate_batch(batches[number % len(batches)], lambda: None, lambda *_: True)
        synchronize()

    for number in range(len(batches)):
        call(number)  # warm-up: every batch's adapters loaded (and, compiled, swapped in once)
    swap = float("nan")
    if len(batches) > 1 and batches[0][0].adapters:
        with torch.inference_mode():  # as the engine activates adapters
            engine.adapters.activate(batches[0][0].adapters)
            synchronize()
            began = time.perf_counter()
            engine.adapters.activate(batches[1][0].adapters)
            synchronize()
            swap = (time.perf_counter() - began) * 1000
    batch = len(batches[0])
    calls = max(1, images // batch)
    began = time.perf_counter()
    for number in range(calls):
        call(number)
    seconds = (time.perf_counter() - began) / (calls * batch)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return seconds, peak, swap


Case = tuple[str, Callable[[], Engine], list[list[GenerationRequest]]]  # row name, engine maker, batches in turn


def option_cases(base: ModelSettings, weights: str, device: str, size: int, only: str | None,
                 adapters: tuple[Adapter, Adapter] | None) -> list[Case]:
    """The option rows; with ``adapters``, the LoRA rows too, their calls alternating between them."""
    cases = []
    rows = [(*row, ((),)) for row in ROWS] + [(*row, tuple((one,) for one in adapters))
                                               for row in LORA_ROWS if adapters]
    for name, options, batch, adapter_sets in rows:
        if only and name not in only.split(","):
            continue
        model = base.model_copy(update=options)
        batches = [[GenerationRequest(f"a lighthouse on a cliff at dusk, study {n}", size, size, n, model.steps,
                                      model.guidance, adapters=chosen) for n in range(batch)]
                   for chosen in adapter_sets]
        cases.append((name, partial(FluxEngine, weights, model, device=device), batches))
    return cases


def upscale_case(base: ModelSettings, weights: str, controlnet: str, device: str, size: int) -> Case:
    """A ``size``/2 picture redrawn at ``size``."""
    model = base.model_copy(update={"controlnet": controlnet})
    low_resolution = Image.effect_mandelbrot((size // 2, size // 2), (-2, -1.5, 1, 1.5), 64).convert("RGB")
    request = GenerationRequest("", size, size, 0, model.steps, model.guidance, images=(low_resolution,),
                                control=ControlSettings(conditioning_scale=0.6))
    return (f"ControlNet upscale {size // 2} -> {size}", partial(ControlNetUpscaleEngine, weights, model,
                                                                  device=device), [[request]])


REFERENCE_CASES = {  # case: (weights, tiny family, steps, guidance)
    "kontext-references": ("black-forest-labs/FLUX.1-Kontext-dev", "kontext", 28, 2.5),
    "flux2-references": ("black-forest-labs/FLUX.2-dev", "flux2", 28, 4.0),
}
REFERENCE_COUNTS = (1, 2, 3)


def reference_picture(number: int, size: int) -> Image.Image:
    """A smooth synthetic picture, different for each number (gradients: no download)."""
    x, y = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size))
    weights = np.random.default_rng(number).uniform(0, 1, (3, 3))
    channels = [weights[c, 0] * x + weights[c, 1] * y + weights[c, 2] * x * y for c in range(3)]
    return Image.fromarray((np.stack(channels, axis=-1) / 3 * 255).astype(np.uint8))


def run_reference_case(case: str, weights: str, model: ModelSettings, device: str, size: int, images: int) -> None:
    """Seconds per edit and peak GPU memory for each number of input images, one model load."""
    cuda = device.startswith("cuda")
    engine = FluxEngine(weights, model, device=device)
    engine.load()
    print(f"{case}: {engine.description}, {size}x{size}, {model.steps} steps, guidance {model.guidance}")
    print("| images | s/edit | peak GiB |")
    print("|--------|--------|----------|")
    for count in REFERENCE_COUNTS:
        request = GenerationRequest("put the subjects of these pictures together in one scene", size, size, 0,
                                    model.steps, model.guidance,
                                    images=tuple(reference_picture(n, size) for n in range(count)))
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        engine.generate_batch([request], lambda: None, lambda *_: True)  # warm-up
        began = time.perf_counter()
        for _ in range(images):
            engine.generate_batch([request], lambda: None, lambda *_: True)
            if cuda:
                torch.cuda.synchronize()
        seconds = (time.perf_counter() - began) / images
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"| {count:6} | {seconds:6.3f} | {peak:8.2f} |", flush=True)


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
    parser.add_argument("--upscale", action="store_true", help="time the ControlNet upscaler instead")
    parser.add_argument("--lora", action="append", default=[],
                        help="a LoRA: file, hub repo[:file] or 'tiny'; twice for two (adds the LoRA rows)")
    parser.add_argument("--case", choices=list(REFERENCE_CASES), help="time edits with 1, 2 and 3 input images")
    parser.add_argument("--offload", choices=["none", "model", "group"], default="none",
                        help="with --case: the model's offload option")
    args = parser.parse_args()
    if args.case:
        reference_case(args)
        return
    if not (args.preset or args.weights):
        parser.error("give --preset or --weights")
    if args.upscale and args.weights != "tiny" and not torch.cuda.is_available():
        parser.error("--upscale runs FLUX.1 [dev] and its ControlNet: it needs CUDA (or --weights tiny)")
    base = PRESETS[args.preset].model_settings("bench") if args.preset else ModelSettings(weights=args.weights)
    overrides = {k: v for k, v in {"steps": args.steps, "guidance": args.guidance}.items() if v is not None}
    base = base.model_copy(update={"prompt_cache": 0, **overrides})  # every image pays for its text encoding
    with tempfile.TemporaryDirectory() as folder:
        weights = base.weights
        if weights == "tiny":
            weights = str(ensure_tiny_pipeline(Path(folder) / "tiny"))
        if args.upscale:
            controlnet = UPSCALER
            if args.weights == "tiny":
                controlnet = str(ensure_tiny_pipeline(Path(folder) / "tiny-controlnet", "controlnet-upscaler"))
            cases = [upscale_case(base, weights, controlnet, args.device, args.size)]
        else:
            adapters = lora_pair(args.lora, Path(folder)) if args.lora else None
            cases = option_cases(base, weights, args.device, args.size, args.only, adapters)
        print(f"{weights}, {args.size}x{args.size}, {base.steps} steps, guidance {base.guidance}, {args.device}"
              f" ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'})")
        print(f"| {'option':34} | s/image | peak GiB | swap ms |")
        print(f"|{'-' * 36}|---------|----------|---------|")
        for name, make_engine, batches in cases:
            try:
                seconds, peak, swap = measure(make_engine, batches, args.device, args.images)
                print(f"| {name:34} | {seconds:7.3f} | {peak:8.2f} | {swap:7.1f} |", flush=True)
                gc.collect()  # the row's engine goes before the next one loads
            except Exception as error:  # an option this machine lacks (no torchao, no bitsandbytes...)
                print(f"| {name:34} | {'-':>7} | {'-':>8} | {'-':>7} |  {type(error).__name__}: {str(error)[:80]}",
                      flush=True)


def reference_case(args: argparse.Namespace) -> None:
    weights, family, steps, guidance = REFERENCE_CASES[args.case]
    weights = args.weights or weights
    if weights != "tiny" and not torch.cuda.is_available():
        raise SystemExit(f"--case {args.case} needs a CUDA GPU (--weights tiny --device cpu checks the script)")
    model = ModelSettings(weights=weights, kind="edit", steps=args.steps or steps,
                          guidance=args.guidance if args.guidance is not None else guidance, offload=args.offload,
                          prompt_cache=0)
    with tempfile.TemporaryDirectory() as folder:
        if weights == "tiny":
            weights = str(ensure_tiny_pipeline(Path(folder) / family, family))
        run_reference_case(args.case, weights, model, args.device, args.size, args.images)


if __name__ == "__main__":
    main()
