"""How well the demo model draws what it is asked, at every aspect ratio of the tool: the held-out
captions of ``tests/test_demo_model.py`` (never a training caption), generated through the engine
in batches of four as the service batches them, read back by that test's own checker. The test
holds 1:1 and 16:9 to their thresholds; this prints the figures for every ratio, for a model
folder being trained as well as for the shipped one. Speed is ``bench/demo_model.py``'s.

    python bench/demo_quality.py [--weights FOLDER] [--ratios 1:1 21:9] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test's checker, from a checkout

from tests.test_demo_model import expected, held_out_sample, read_scene, scores  # noqa: E402

from fluxhost.demo import WEIGHTS, demo_model_settings  # noqa: E402
from fluxhost.engines.base import GenerationRequest  # noqa: E402
from fluxhost.engines.flux import FluxEngine  # noqa: E402
from fluxhost.engines.upscale import render_size  # noqa: E402
from fluxhost.orders import ASPECT_RATIOS, size_for_aspect_ratio  # noqa: E402

BATCH = 4


def readings(engine: FluxEngine, width: int, height: int) -> list[tuple[tuple, tuple]]:
    """(what the checker read, what the caption asked) for each held-out caption, seeds as the test's."""
    model, captions = engine.model, held_out_sample()
    pairs = []
    for first in range(0, len(captions), BATCH):
        chunk = captions[first : first + BATCH]
        requests = [GenerationRequest(str(caption), width, height, seed, model.steps, model.guidance)
                    for seed, caption in enumerate(chunk, start=first)]
        for caption, images in zip(chunk, engine.generate_batch(requests, lambda: None, lambda *_: True), strict=True):
            pairs.append((read_scene(images[0]), expected(caption)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="a demo-model folder (default: the shipped one)")
    parser.add_argument("--ratios", nargs="+", default=list(ASPECT_RATIOS), choices=ASPECT_RATIOS)
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    import torch  # here: the fluxhost imports above set torch's OpenMP wait policy before it loads

    torch.set_num_threads(arguments.threads)
    model = demo_model_settings(weights=str(arguments.weights), upscaler=str(arguments.weights / "upscaler"))
    engine = FluxEngine(model.weights, model)
    engine.load()
    print(f"{len(held_out_sample())} held-out captions a ratio, {model.steps} steps, guidance {model.guidance}, "
          f"batches of {BATCH}")
    print(f"{'aspect':>6} {'drawn at':>9} {'background':>10} {'colour':>6} {'place':>6} {'shape':>6} "
          f"{'all four':>8}")
    for ratio in arguments.ratios:
        width, height = size_for_aspect_ratio(ratio)
        pairs = readings(engine, width, height)
        result = scores(pairs)
        whole = sum(got == want for got, want in pairs) / len(pairs)
        drawn = "x".join(map(str, render_size(width, height, model.render_pixels, model.render_min_side)))
        print(f"{ratio:>6} {drawn:>9} {result['background']:>10.2f} {result['colour']:>6.2f} {result['place']:>6.2f} "
              f"{result['shape']:>6.2f} {whole:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
