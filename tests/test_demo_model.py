"""The shipped demo model, through the running service at a megapixel: held-out captions (never a
training caption), read back by this file's own checker.

Issue 15 asks for 0.9 on each of background, colour, place and shape, at 1:1 and at 16:9 (drawn at
208x112: with the shorter side under 112 pixels, squares and triangles come out round-cornered);
issue 32, for a measure of how sharp the edges are, held (:func:`edge_width`).
``bench/demo_quality.py`` gives the same figures for every aspect ratio.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from fluxhost.demo import demo_model_settings
from fluxhost.demo.scenes import COLOURS, PLACES, Caption, held_out_captions
from fluxhost.signing import KeyMode
from tests.helpers import LOOPBACK_HTTP, SLUG, TORCH_THREADS, LiveServer, ProtocolClient

pytestmark = pytest.mark.slow  # the demo pipeline, at full size
# measured with 20 steps: 1.0, 1.0, 1.0 and shape 1.0 at 1:1; 1.0, 1.0, 1.0 and shape 1.0 at 16:9
AT_LEAST = {aspect: {"background": 0.9, "colour": 0.9, "place": 0.9, "shape": 0.9} for aspect in ("1:1", "16:9")}
EDGE_AT_MOST = 8.0
"""The median :func:`edge_width` held at both ratios, in output pixels: 5.9 at 1:1 and 4.8 at 16:9
by ``bench/demo_quality.py`` (5.5 and 5.0 before the transformer's last stage, 6.6 and 5.2 before
the decoder's last stage, 11.0 and 9.3 before its sharpening stage; an exact drawing scores about 1)."""
CAPTIONS_PER_SHAPE = 10
ASPECTS = {"1:1": (1024, 1024), "16:9": (1376, 768)}

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _NAMES], dtype=np.float32)
FILLS = {"square": 1.0, "circle": 0.845, "triangle": 0.595}
"""How much of its box each shape fills as :func:`read_scene` measures it on exact drawings (more
than pi/4 and 1/2: the box leaves out the thinnest 0.5% at each side)."""


def palette_labels(image: Image.Image) -> tuple[np.ndarray, np.ndarray, int]:
    """Each pixel's nearest palette colour (its index), whether it is clearly that colour rather
    than an edge's blend of two, and the background's index: the commonest colour of the frame."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width, _ = pixels.shape
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2, as one product with the palette: a megapixel in tens of ms
    squared = (pixels * pixels).sum(-1, keepdims=True) - 2 * pixels @ _PALETTE.T + (_PALETTE * _PALETTE).sum(-1)
    label = squared.argmin(-1)
    frame = max(2, min(height, width) // 30)
    border = np.concatenate([label[:frame].ravel(), label[-frame:].ravel(), label[:, :frame].ravel(),
                             label[:, -frame:].ravel()])
    return label, squared.min(-1) < 60**2, int(np.bincount(border, minlength=len(_NAMES)).argmax())


def object_colour(label: np.ndarray, clear: np.ndarray, background: int) -> int | None:
    """The object's palette index, from :func:`palette_labels`: the commonest colour clearly not
    the background's, or None where too few pixels are (no object)."""
    thing = clear & (label != background)
    if thing.sum() < 0.002 * label.size:
        return None
    return int(np.bincount(label[thing], minlength=len(_NAMES)).argmax())


def read_scene(image: Image.Image) -> tuple[str, str | None, str | None, str | None]:
    """(background colour, object colour, place, shape) of a one-object picture, as a viewer would
    say them: the background is the commonest colour of the frame; the object, the commonest other
    palette colour; its place, the anchor nearest its box's centre; its shape, the one whose fill of
    its box (:data:`FILLS`) is nearest the object's."""
    label, clear, background = palette_labels(image)
    height, width = label.shape
    colour = object_colour(label, clear, background)
    if colour is None:
        return _NAMES[background], None, None, None
    ys, xs = np.nonzero(clear & (label == colour))
    left, right = np.percentile(xs, [0.5, 99.5])
    top, bottom = np.percentile(ys, [0.5, 99.5])
    x, y = (left + right) / 2 / width, (top + bottom) / 2 / height
    place = min(PLACES, key=lambda name: (PLACES[name][0] - x) ** 2 + (PLACES[name][1] - y) ** 2)
    fill = len(xs) / max(1.0, (right - left + 1) * (bottom - top + 1))
    shape = min(FILLS, key=lambda name: abs(FILLS[name] - fill))
    return _NAMES[background], _NAMES[colour], place, shape


def edge_width(image: Image.Image) -> float | None:
    """How many pixels a one-object picture's edge takes to go from its background's colour to its
    object's (10 % to 90 % of the way, across the edge), or None when it has no object
    (:func:`object_colour`). Each pixel is placed between the two colours as the picture has them
    (the median of the pixels clearly of each); the transition's area over the edge's length, which
    is the sum of that placement's gradient (the coarea formula), is its width. An exact drawing
    scores about one pixel; a Gaussian blur of radius r, about 2.6 r."""
    label, clear, background = palette_labels(image)
    colour = object_colour(label, clear, background)
    if colour is None:
        return None
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    outside, inside = (np.median(pixels[clear & (label == index)], axis=0) for index in (background, colour))
    step = inside - outside
    placement = np.clip((pixels - outside) @ step / (step @ step), 0, 1)
    rows, columns = np.gradient(placement)
    return float(((placement > 0.1) & (placement < 0.9)).sum() / np.hypot(rows, columns).sum())


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
    return Image.open(io.BytesIO(LOOPBACK_HTTP.get(output["url"]).content))


def test_the_checker_reads_rendered_scenes():
    from fluxhost.demo.scenes import lay_out, render

    rng = random.Random(1)
    for caption in held_out_captions()[:40]:
        width, height = rng.choice(list(ASPECTS.values()))
        assert read_scene(render(caption, lay_out(caption, rng), width, height)) == expected(caption)


def test_edge_width_is_the_colour_transition_across_the_edge():
    from PIL import ImageFilter

    from fluxhost.demo.scenes import lay_out, render

    rng = random.Random(2)
    for caption in held_out_captions()[::60]:
        drawn = render(caption, lay_out(caption, rng), 1024, 1024)
        assert edge_width(drawn) < 1.2
        for radius in (1, 3):
            assert 2.3 * radius < edge_width(drawn.filter(ImageFilter.GaussianBlur(radius))) < 3.0 * radius
        assert 6 < edge_width(drawn.resize((128, 128), Image.Resampling.BOX).resize((1024, 1024))) < 10
    assert edge_width(Image.new("RGB", (64, 64), COLOURS["red"])) is None


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    from fluxhost.settings import Settings
    from tests.helpers import free_port

    settings = Settings(data_dir=tmp_path_factory.mktemp("demo"), host="127.0.0.1", port=free_port(),
                        torch_threads=TORCH_THREADS, worker_process=False, shutdown_grace_seconds=2.0,
                        models={SLUG: demo_model_settings(max_batch=4, batch_wait_ms=1000)})
    with LiveServer(settings) as live:
        yield live, ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))


@pytest.mark.parametrize("aspect", list(ASPECTS))
def test_held_out_captions_are_drawn_as_asked(demo_server, aspect):
    live, client = demo_server
    captions = held_out_sample()
    taskids = [client.run(prompt=str(caption), seed=str(seed), aspectRatio=aspect, outputFormat="png")["taskid"]
               for seed, caption in enumerate(captions)]
    pairs, edges = [], []
    for taskid, caption in zip(taskids, captions, strict=True):
        image = picture(client.wait(taskid))
        assert image.size == ASPECTS[aspect]
        pairs.append((read_scene(image), expected(caption)))
        edges.append(edge_width(image))
    result = scores(pairs)
    assert all(result[name] >= least for name, least in AT_LEAST[aspect].items()), result
    assert np.median([edge for edge in edges if edge is not None]) <= EDGE_AT_MOST, edges


def test_a_batch_of_four_prompts_draws_each_its_own(demo_server):
    """Four held-out captions with four different backgrounds in one pipeline call: each task's
    picture is what its caption drawn alone gives, and its background is its own caption's."""
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
    batched = [picture(task) for task in tasks]
    assert [read_scene(image)[0] for image in batched] == [caption.background for caption in captions]
    for index, (caption, image) in enumerate(zip(captions, batched, strict=True)):
        alone = picture(client.wait(client.run(prompt=str(caption), seed=str(100 + index),
                                                aspectRatio="1:1")["taskid"]))
        assert read_scene(image) == read_scene(alone)
        difference = np.abs(np.asarray(image, dtype=np.float32) - np.asarray(alone, dtype=np.float32))
        assert difference.mean() < 1.0, caption  # the same picture, up to the rounding of a batched matmul


def test_the_demo_reads_prompts_in_any_case_and_says_what_it_cannot_draw(demo_server):
    import os
    import subprocess

    from fluxhost.demo import EXAMPLE_PROMPT
    from tests.helpers import FLUXHOST

    live, client = demo_server
    drawn = [client.wait(client.run(prompt=prompt, seed="3", aspectRatio="1:1")["taskid"]) for prompt in (
        EXAMPLE_PROMPT, EXAMPLE_PROMPT.title(), f'"{EXAMPLE_PROMPT.replace(" on ", ", on ")}."',
        "a lighthouse on a cliff at dusk")]
    lower, capitals, punctuated, lighthouse = drawn
    for other in (capitals, punctuated):  # punctuation the demo never read was drawn as tokens: another picture
        assert np.array_equal(np.asarray(picture(lower)), np.asarray(picture(other)))
    assert "Note:" not in lower["debugoutput"] + capitals["debugoutput"] + punctuated["debugoutput"]
    assert ('Note: the demo model does not know "lighthouse", "cliff", "dusk": it draws flat shapes only'
            in lighthouse["debugoutput"])

    [tool] = client.call("Tool/Detail", {"slugowner": "black-forest-labs", "slugproject": "flux-pro-1.1"})["tool"]
    assert tool["description"].startswith("Served on this server by the fluxhost demo model: one or two flat shapes")
    prompt = next(item for item in tool["parameters"][0]["items"] if item["id"] == "prompt")
    assert prompt["example"] == EXAMPLE_PROMPT and prompt["default"].startswith("A quiet, sun-drenched")

    key = live.service.keys.create(KeyMode.SIGNATURE)
    told = subprocess.run([FLUXHOST, "run", "a cat wearing a hat", "-o", str(live.settings.data_dir)], timeout=120,
                          env={**os.environ, "FLUXHOST_SERVER": live.base_url, "FLUXHOST_API_KEY": key.api_key,
                               "FLUXHOST_API_SECRET": key.api_secret}, capture_output=True, text=True)
    assert told.returncode == 0 and 'Note: the demo model does not know "cat", "wearing", "hat"' in told.stderr


def test_words_beyond_ascii_are_named_whole_and_numbers_too():
    from fluxhost.demo import unknown_words

    assert unknown_words("A crème brûlée, 42 красных кругов; a red circle") == [
        "crème", "brûlée", "42", "красных", "кругов"]


def test_render_size_keeps_the_shape_at_about_the_trained_pixels():
    from fluxhost.engines.upscale import render_size

    assert render_size(1024, 1024, 128 * 128) == (128, 128)
    assert render_size(1376, 768, 128 * 128) == (176, 96)
    assert render_size(768, 1376, 128 * 128) == (96, 176)
    assert render_size(1024, 1024, None) == (1024, 1024)
    assert render_size(1024, 1024, 128 * 128, min_side=112) == (128, 128)
    assert render_size(1376, 768, 128 * 128, min_side=112) == (208, 112)  # wide: the shorter side kept at 112
    assert render_size(672, 1568, 128 * 128, min_side=112) == (112, 256)
    for width, height in [(1568, 672), (512, 512), (3000, 200)]:
        drawn_width, drawn_height = render_size(width, height, 128 * 128)
        assert drawn_width % 16 == 0 and drawn_height % 16 == 0
        assert abs(drawn_width / drawn_height - width / height) / (width / height) < 0.35


def test_the_shipped_weights_fit_in_twenty_five_megabytes():
    from fluxhost.demo import WEIGHTS

    assert sum(path.stat().st_size for path in WEIGHTS.rglob("*") if path.is_file()) <= 25_000_000


def test_the_shipped_configs_name_no_folder_of_the_machine_that_trained_them():
    """A part trained from a loaded pipeline (the editor, from the drawing transformer) has its
    config record where that pipeline was loaded from: nothing of the training machine ships."""
    import json

    from fluxhost.demo import WEIGHTS

    for path in WEIGHTS.rglob("*.json"):
        text = path.read_text()
        assert "_name_or_path" not in json.loads(text) and "/work/" not in text and "/tmp/" not in text, path


def test_the_upscaler_redraws_small_pictures_and_resizes_large_ones():
    """Swin2SR redraws at its own whole factor (8x): a 1600x1600 photo given to the upscaler tool took
    7 GB; a 2,500-pixel one would take about 18."""
    import torch

    from fluxhost.demo import WEIGHTS
    from fluxhost.engines.upscale import SUPER_RESOLVE_MAX_PIXELS, Upscaler

    upscaler = Upscaler(str(WEIGHTS / "upscaler"), "cpu", torch.float32)
    redrawn = []
    super_resolve = upscaler._super_resolve
    upscaler._super_resolve = lambda image: redrawn.append(image.size) or super_resolve(image)
    assert upscaler(Image.new("RGB", (128, 128), "red"), 1024, 1024).size == (1024, 1024)
    side = int(SUPER_RESOLVE_MAX_PIXELS**0.5) + 1
    assert upscaler(Image.new("RGB", (side, side), "red"), 2 * side, 2 * side).size == (2 * side, 2 * side)
    assert redrawn == [(128, 128)]  # the large one: Lanczos alone


def test_the_upscaler_keeps_the_scene():
    """On the demo autoencoder's pictures of held-out scenes (exact latents), the Swin2SR upscale
    reads as the same background, colour and place as a Lanczos resize, at the requested size. (Its edges are about as
    clean as Lanczos's now; the first version's were 0.75x Lanczos's blended pixels.)"""
    import torch
    from diffusers import AutoencoderKL

    from fluxhost.demo import WEIGHTS
    from fluxhost.demo.scenes import lay_out
    from fluxhost.demo.train import layout_latents
    from fluxhost.engines.upscale import Upscaler

    torch.set_num_threads(TORCH_THREADS)
    vae = AutoencoderKL.from_pretrained(WEIGHTS / "vae").eval()
    upscaler = Upscaler(str(WEIGHTS / "upscaler"), "cpu", torch.float32)
    rng = random.Random(3)
    readings = []
    for caption in held_out_sample()[::5]:
        layout = lay_out(caption, rng)
        with torch.inference_mode():
            decoded = vae.decode(layout_latents([layout], [caption], 128, 128)).sample[0]
        small = Image.fromarray(((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
        upscaled, resampled = upscaler(small, 1024, 1024), small.resize((1024, 1024), Image.Resampling.LANCZOS)
        assert upscaled.size == (1024, 1024)
        readings.append((read_scene(upscaled), read_scene(resampled)))
    # Shapes are left out: the autoencoder's are soft enough that either upscale may tip a reading.
    assert all(upscaled[:3] == resampled[:3] for upscaled, resampled in readings), readings


def test_the_last_training_changes_the_drawing_transformer_alone():
    """The transformer's training at served sizes runs after the editor, which reads the text
    encoders: it must leave them, and the autoencoder, as they were."""
    import torch

    from fluxhost.demo.train import Recipe, build_pipeline, train_at_served_sizes

    torch.manual_seed(0)
    pipeline = build_pipeline()
    pipeline.vae.register_to_config(shift_factor=0.0, scaling_factor=1.0)
    before = {name: {key: value.clone() for key, value in getattr(pipeline, name).state_dict().items()}
              for name in ("transformer", "text_encoder", "text_encoder_2", "vae")}
    train_at_served_sizes(pipeline, Recipe(served_steps=2, denoiser_batch=2), report=lambda line: None)
    for name, weights in before.items():
        after = getattr(pipeline, name).state_dict()
        unchanged = all(torch.equal(after[key], value) for key, value in weights.items())
        assert unchanged == (name != "transformer"), name
    assert not pipeline.transformer.training and not any(p.requires_grad for p in pipeline.transformer.parameters())


def test_the_training_script_is_reproducible(tmp_path):
    """A few steps of each stage, twice from the same seed: every weight and tokenizer file comes
    out the same, in a folder that loads like any FLUX pipeline."""
    import torch
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    from fluxhost.demo.train import Recipe, train

    recipe = Recipe(decoder_steps=2, encoder_steps=2, sharpen_steps=2, denoiser_steps=2, denoiser_batch=4,
                    upscaler_steps=2, upscaler_batch=2, autoencoder_batch=2, fit_pool=16, fit_steps=2,
                    editor_steps=2, editor_batch=2, served_steps=2)
    for run in ("a", "b"):
        train(tmp_path / run, recipe, report=lambda line: None)
    files = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*") if path.is_file())
    assert {path.parts[0] for path in files} >= {"transformer", "text_encoder", "text_encoder_2", "tokenizer",
                                                  "tokenizer_2", "vae", "upscaler", "editor"}
    for name in files:
        first, second = tmp_path / "a" / name, tmp_path / "b" / name
        if name.suffix == ".safetensors":
            a, b = load_file(first), load_file(second)
            assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), name
        else:
            assert first.read_bytes() == second.read_bytes(), name
    pipeline = FluxPipeline.from_pretrained(tmp_path / "a")
    image = pipeline("a red circle on the left on a blue background", width=128, height=128, num_inference_steps=2,
                     max_sequence_length=24).images[0]
    assert image.size == (128, 128)
