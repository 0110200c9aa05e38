"""LoRA adapters on the tiny FLUX pipeline on the CPU: the time to swap to an adapter (loaded from
its file, then from the engine's cache) and tasks per second with 1, 4 and 16 distinct adapters
taking turns, beside the same tasks without any adapter (each rate the best of two rounds; the
prompt cache is off, so that every task encodes its prompt whatever ran before it).

    python bench/lora.py [--tasks 32] [--steps 2] [--size 64] [--threads 2] [--lora-cache 8]

With more distinct adapters than ``--lora-cache`` every turn reads its file again: the 16-adapter
row shows that cost. On a GPU with real weights, bench/gpu_flux.py --lora times a real LoRA.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fluxhost.engines.base import Adapter, GenerationRequest
from fluxhost.engines.flux import FluxEngine
from fluxhost.settings import ModelSettings
from fluxhost.testing.loras import LAYOUTS, adapter_of, write_lora
from fluxhost.testing.tiny import ensure_tiny_pipeline


def run(engine: FluxEngine, size: int, steps: int, seed: int, adapters: tuple[Adapter, ...]) -> None:
    request = GenerationRequest(f"a lighthouse, study {seed}", size, size, seed, steps, 3.5, adapters=adapters)
    engine.generate_batch([request], lambda: None, lambda *_: True)


def activation_seconds(engine: FluxEngine, adapter: Adapter) -> float:
    began = time.perf_counter()
    with torch.inference_mode():  # as the engine activates adapters
        engine.adapters.activate([adapter])
    return time.perf_counter() - began


def tasks_per_second(engine: FluxEngine, adapters: list[Adapter], tasks: int, size: int, steps: int) -> float:
    for index, adapter in enumerate(adapters):  # warm-up: each adapter once
        run(engine, size, steps, index, (adapter,) if adapter else ())
    began = time.perf_counter()
    for task in range(tasks):
        adapter = adapters[task % len(adapters)]
        run(engine, size, steps, task, (adapter,) if adapter else ())
    return tasks / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora-cache", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        weights = ensure_tiny_pipeline(Path(folder) / "tiny")
        adapters = [adapter_of(write_lora(Path(folder) / f"lora-{seed}.safetensors", LAYOUTS[seed % 3], seed))
                    for seed in range(16)]
        model = ModelSettings(steps=args.steps, max_sequence_length=32, lora_cache=args.lora_cache,
                              prompt_cache=0)
        engine = FluxEngine(str(weights), model, device="cpu")
        engine.load()
        print(f"tiny FLUX on CPU, {args.size}x{args.size}, {args.steps} steps, {args.threads} torch threads, "
              f"lora_cache {args.lora_cache}, prompt cache off, {args.tasks} tasks one after another")
        print(f"  swap to an adapter, from its file    {activation_seconds(engine, adapters[0]) * 1000:7.1f} ms")
        with torch.inference_mode():
            engine.adapters.activate([adapters[1]])
        print(f"  swap to an adapter, already loaded   {activation_seconds(engine, adapters[0]) * 1000:7.1f} ms")
        with torch.inference_mode():
            engine.adapters.activate([])
        for seed in range(3):  # the first calls pay for allocations
            run(engine, args.size, args.steps, seed, ())
        cycles = {"none": [None]} | {str(distinct): adapters[:distinct] for distinct in (1, 4, 16)}
        rates = dict.fromkeys(cycles, 0.0)
        for _round in range(2):  # the best of two rounds, each over every row: less of the machine's noise
            for row, cycle in cycles.items():
                rates[row] = max(rates[row], tasks_per_second(engine, cycle, args.tasks, args.size, args.steps))
    for distinct, rate in rates.items():
        label = "no adapter" if distinct == "none" else f"{distinct:>2} distinct adapter(s)"
        print(f"  {label:24} {rate:6.2f} tasks/s   ratio to no adapter {rate / rates['none']:5.2f}")


if __name__ == "__main__":
    main()
