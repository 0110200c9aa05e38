"""LoRA training speed and peak GPU memory on FLUX.1, through the engine's own trainer: a table
to paste. Runs wherever CUDA is (and on a CPU with the tiny model, to check the script).

    python bench/gpu_train.py                                   # FLUX.1 [dev], rank 16, 512 and 1024 px
    python bench/gpu_train.py --weights /models/flux-dev --rank 32 --sizes 512
    python bench/gpu_train.py --weights tiny --device cpu --sizes 64 --steps 6   # the script itself, on a CPU

Each row loads the weights with its options (bfloat16 on CUDA; ``nf4`` rows load the transformer
quantized to 4 bits, QLoRA), trains ``--warmup`` steps (not timed), then ``--steps`` steps on
``--pictures`` synthetic pictures (flat colours with captions) at batch 1, and reports optimizer
steps per second and the peak memory CUDA allocated. Rows: AdamW; with gradient checkpointing;
8-bit AdamW with gradient checkpointing; and that on nf4 weights (bitsandbytes installed). A row
that cannot run here (no bitsandbytes, out of memory) says why and the others go on.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from fluxhost.engines.flux import FluxEngine
from fluxhost.engines.training import TrainingExample, TrainingPlan
from fluxhost.settings import ModelSettings
from fluxhost.testing.tiny import ensure_tiny_pipeline

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")


@dataclass(frozen=True)
class Case:
    name: str
    optimizer: str = "adamw"
    checkpointing: bool = False
    quantize: str = "none"


CASES = (Case("adamw"), Case("adamw, checkpointing", checkpointing=True),
         Case("adamw8bit, checkpointing", "adamw8bit", True), Case("adamw8bit, checkpointing, nf4", "adamw8bit",
                                                                   True, "nf4"))


class Timer:
    """The trainer's progress callbacks: times the steps after the warm-up."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.began = 0.0
        self.losses: list[float] = []

    def step(self, step: int, total: int, loss: float) -> bool:
        if step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.began = time.perf_counter()
        self.losses.append(loss)
        return True

    def checkpoint(self, checkpoint) -> None:
        """Checkpoints are not kept here."""

    def samples(self, step: int, images: list[Image.Image]) -> None:
        """No samples are drawn here."""


def row(weights: str, device: str, case: Case, size: int, args: argparse.Namespace) -> str:
    model = ModelSettings(steps=4, quantize=case.quantize, max_sequence_length=args.max_sequence_length)
    engine = FluxEngine(weights, model, device=device)
    try:
        engine.load()
        examples = [TrainingExample(Image.new("RGB", (size, size), COLOURS[index % len(COLOURS)]),
                                    f"a {COLOURS[index % len(COLOURS)]} zq") for index in range(args.pictures)]
        plan = TrainingPlan(steps=args.warmup + args.steps, learning_rate=4e-4, rank=args.rank, batch_size=1,
                            resolution=size, seed=0, gradient_checkpointing=case.checkpointing,
                            optimizer=case.optimizer)
        timer = Timer(args.warmup)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        engine.train(plan, examples, None, timer)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rate = args.steps / (time.perf_counter() - timer.began)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if torch.cuda.is_available() else "-"
        return f"| {case.name} | {size} | {args.rank} | {rate:.2f} | {peak} | {timer.losses[-1]:.4f} |"
    except Exception as error:  # a row that cannot run here says why; the others go on
        return f"| {case.name} | {size} | {args.rank} | - | - | {type(error).__name__}: {str(error)[:80]} |"
    finally:
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="black-forest-labs/FLUX.1-dev", help="a folder, hub id, or tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pictures", type=int, default=8)
    parser.add_argument("--max-sequence-length", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        weights = args.weights
        if weights == "tiny":
            weights = str(ensure_tiny_pipeline(Path(folder) / "tiny"))
            args.max_sequence_length = 32
        print(f"LoRA training on {args.weights}, {args.steps} timed steps at batch 1")
        print("| case | px | rank | steps/s | peak GiB | last loss |")
        print("|---|---|---|---|---|---|")
        for size in (int(side) for side in args.sizes.split(",")):
            for case in CASES:
                print(row(weights, args.device, case, size, args), flush=True)


if __name__ == "__main__":
    main()
