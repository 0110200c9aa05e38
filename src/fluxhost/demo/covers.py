"""Draws the tools' cover pictures (Tool/List's ``image``) with the demo model, into the package's
web folder: ``python -m fluxhost.demo.covers``. They are drawn by the model the server ships, so
they look like what it makes offline; the same files come out on every run."""

from __future__ import annotations

from pathlib import Path

import torch

from fluxhost.demo import WEIGHTS, demo_model_settings
from fluxhost.engines.base import GenerationRequest, generate
from fluxhost.engines.flux import FluxEngine
from fluxhost.family import MEMBERS
from fluxhost.tools import GENERIC_COVER, cover_name

COVERS = Path(__file__).parent.parent / "web" / "covers"
SIZE = 256
PROMPTS = (
    "a yellow circle in the center on a blue background",
    "a red square on the left and a white circle on the right on a black background",
    "a green triangle at the top on a white background",
    "an orange circle at the bottom on a purple background",
    "a blue square in the center on a yellow background",
    "a white triangle on the right on a red background",
)


def draw() -> list[Path]:
    torch.set_num_threads(1)  # the same bytes on every machine
    engine = FluxEngine(str(WEIGHTS), demo_model_settings(), device="cpu")
    engine.load()
    COVERS.mkdir(parents=True, exist_ok=True)
    written = []
    for number, name in enumerate([GENERIC_COVER, *(cover_name(member.slug) for member in MEMBERS)]):
        request = GenerationRequest(PROMPTS[number % len(PROMPTS)], SIZE, SIZE, seed=number,
                                    steps=engine.model.steps, guidance=engine.model.guidance)
        [image] = generate(engine, request, lambda: None, lambda *_: True)
        path = COVERS / f"{name}.jpg"
        image.save(path, format="JPEG", quality=85)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in draw():
        print(path, path.stat().st_size)
