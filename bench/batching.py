"""Images per second through the whole service at batch sizes 1, 2 and 4: the tiny FLUX pipeline
on the CPU, a burst of tasks of the same size submitted at once, timed from the first Run to the
last task done. The last line is the batch-4 ratio to unbatched.

    python bench/batching.py [--tasks 8] [--steps 4] [--threads 2] [--aspect-ratio 1:1]

On a CPU a batch mostly saves per-call overhead (text encoders, scheduler, Python); on a GPU,
where one image leaves the device partly idle, the gain is larger: run bench/gpu_flux.py there.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from _server import SLUG, Signer, running_server, wait_for_task
from fluxhost.testing.tiny import ensure_tiny_pipeline


def images_per_second(weights: Path, batch: int, tasks: int, steps: int, threads: int, aspect_ratio: str) -> float:
    models = json.dumps({SLUG: {"weights": str(weights), "steps": steps, "max_sequence_length": 64,
                                "max_batch": batch, "batch_wait_ms": 300 if batch > 1 else 0}})
    with running_server(8797, models=models, torch_threads=str(threads)) as (base_url, key):
        signer = Signer(key)
        with httpx.Client(base_url=base_url, timeout=300) as http:

            def run(seed: int) -> str:
                body = {"prompt": f"a lighthouse, study {seed}", "aspectRatio": aspect_ratio, "seed": str(seed)}
                return http.post(f"/v1/Run/{SLUG}", json=body, headers=signer.headers()).json()["socketaccesstoken"]

            def wait(token: str) -> None:
                wait_for_task(http, signer, token, 0.1)

            wait(run(0))  # warm-up: the first call pays for allocations
            began = time.perf_counter()
            with ThreadPoolExecutor(tasks) as pool:
                tokens = list(pool.map(run, range(1, tasks + 1)))
            for token in tokens:
                wait(token)
            return tasks / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--aspect-ratio", default="1:1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        weights = ensure_tiny_pipeline(Path(folder) / "tiny")
        rates = {batch: images_per_second(weights, batch, args.tasks, args.steps, args.threads, args.aspect_ratio)
                 for batch in (1, 2, 4)}
    print(f"tiny FLUX on CPU, {args.aspect_ratio}, {args.steps} steps, {args.threads} torch threads, "
          f"{args.tasks} tasks submitted at once")
    for batch, rate in rates.items():
        print(f"  max_batch {batch}   {rate:6.2f} images/s   ratio to unbatched {rate / rates[1]:5.2f}")
    print(f"batch-4 ratio to unbatched: {rates[4] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
