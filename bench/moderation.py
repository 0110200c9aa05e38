"""Milliseconds per prompt and per image for each moderation backend on this machine, and the share
of a task's time each takes next to the tiny FLUX model (16:9, 4 steps).

    python bench/moderation.py [--repeat 50] [--threads 2]

The classifiers are the tiny random ones (their cost is what the pipeline around a model costs);
a real classifier adds its own inference time: pass --text-model/--image-model to measure one.
NudeNet is measured when installed (pip install nudenet; AGPL-3.0).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fluxhost.engines.base import GenerationRequest, generate
from fluxhost.engines.flux import FluxEngine
from fluxhost.orders import size_for_aspect_ratio
from fluxhost.safety.classifiers import NudeNet, TransformersImage, TransformersText
from fluxhost.safety.terms import TermLists
from fluxhost.settings import ModelSettings
from fluxhost.testing.classifiers import tiny_image_classifier, tiny_text_classifier
from fluxhost.testing.tiny import ensure_tiny_pipeline
from fluxhost.tools import DEFAULT_PROMPT


def milliseconds(call, repeat: int) -> float:
    call()  # warm-up
    began = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - began) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text-model")
    parser.add_argument("--image-model")
    args = parser.parse_args()
    import torch  # here: the fluxhost imports above set torch's OpenMP wait policy before it loads

    torch.set_num_threads(args.threads)
    width, height = size_for_aspect_ratio("16:9")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        engine = FluxEngine(str(ensure_tiny_pipeline(root / "tiny")), ModelSettings(steps=4, max_sequence_length=64))
        engine.load()
        request = GenerationRequest(DEFAULT_PROMPT, width, height, 1, 4, 3.5)
        [image] = generate(engine, request, lambda: None, lambda *_: True)
        task_ms = milliseconds(lambda: generate(engine, request, lambda: None, lambda *_: True), 3)

        terms = TermLists()
        text = TransformersText(args.text_model or str(tiny_text_classifier(root / "text")))
        pictures = TransformersImage(args.image_model or str(tiny_image_classifier(root / "image")))
        rows = [
            ("prompt: term lists", milliseconds(lambda: terms.check(DEFAULT_PROMPT, 0), args.repeat)),
            (f"prompt: text classifier ({Path(text.name).name})",
             milliseconds(lambda: text.scores(DEFAULT_PROMPT), args.repeat)),
            (f"image: image classifier ({Path(pictures.name).name})",
             milliseconds(lambda: pictures.scores(image), args.repeat)),
        ]
        try:
            nudenet = NudeNet()
            rows.append(("image: NudeNet", milliseconds(lambda: nudenet.scores(image), max(5, args.repeat // 5))))
        except RuntimeError as error:
            rows.append((f"image: NudeNet (not installed: {error})", float("nan")))
    print(f"{width}x{height} image, {args.threads} torch threads; tiny FLUX task (4 steps): {task_ms:.0f} ms")
    for name, ms in rows:
        print(f"  {name:55} {ms:8.2f} ms   {ms / task_ms * 100:6.2f}% of the task")


if __name__ == "__main__":
    main()
