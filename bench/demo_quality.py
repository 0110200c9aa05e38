"""How well the demo model draws what it is asked, at every aspect ratio of the tool: the held-out
captions of ``tests/test_demo_model.py`` (never a training caption), generated through the engine
in batches of four as the service batches them, read back by that test's own checker. The test
holds 1:1 and 16:9 to their thresholds; this prints the figures for every ratio, for a model
folder being trained as well as for the shipped one, and how sharp its edges are: the median of
the test's :func:`~tests.test_demo_model.edge_width`, the pixels an edge takes to go from the
background's colour to the shape's at the requested size; and how often both shapes of a
caption of two (and its background) come out as asked, and what the checker read instead in the
captions that did not (a square read as a circle, a third thing...). Speed is
``bench/demo_model.py``'s.

With ``--edits``: the demo editing model on the held-out edits of ``tests/test_demo_edits.py``
(changes no training pair made), scenes drawn at 1024x1024 and edited one at a time as the
service edits them, judged by that test's checker: how often the asked change was made and how
often everything else stayed, by kind of edit; first, how often the scene given comes back the
same from the latents the editing model is given (the demo's picture reader's), beside the VAE
encoder's and exact ones. ``--pictures FOLDER`` saves the first edit of each kind there, the
picture given beside the picture made (``edit-KIND.png``), and prints its instruction.

    python bench/demo_quality.py [--weights FOLDER] [--ratios 1:1 21:9] [--two-shapes 60] [--threads 2]
    python bench/demo_quality.py --edits [--weights FOLDER] [--per-kind 8] [--guidance 1.0] [--pictures FOLDER]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test's checker, from a checkout

from tests.test_demo_edits import _things, judged, misses, read_things  # noqa: E402
from tests.test_demo_model import edge_width, expected, held_out_sample, read_scene, scores  # noqa: E402

from fluxhost.demo import EDIT_GUIDANCE, WEIGHTS, demo_editor_settings, demo_model_settings, edits  # noqa: E402
from fluxhost.demo.pictures import FlatPictures  # noqa: E402
from fluxhost.demo.scenes import Caption, render, training_caption  # noqa: E402
from fluxhost.engines.base import GenerationRequest  # noqa: E402
from fluxhost.engines.flux import FluxEngine  # noqa: E402
from fluxhost.engines.upscale import render_size  # noqa: E402
from fluxhost.orders import ASPECT_RATIOS, size_for_aspect_ratio  # noqa: E402

BATCH = 4
TWO_SHAPE_CAPTIONS = 60  # by default; a share's standard error: about 0.1 of 20 captions, 0.06 of 60, 0.045 of 120


def two_shape_sample(count: int = TWO_SHAPE_CAPTIONS) -> list[Caption]:
    """``count`` captions of two shapes, fixed from run to run, the first of a longer sample being
    a shorter one's: 120 adds 60 to the default's (no caption of two is held out from training:
    what is asked of them is that both come out right)."""
    rng = random.Random(32)
    return [training_caption(rng, two_things=1.0) for _ in range(count)]


def drawn(engine: FluxEngine, captions: list[Caption], width: int,
          height: int) -> Iterator[tuple[Caption, Image.Image]]:
    """Each caption with its picture, generated in batches of :data:`BATCH` as the service batches
    them, its seed its place in the list (as the tests seed them)."""
    model = engine.model
    for first in range(0, len(captions), BATCH):
        chunk = captions[first : first + BATCH]
        requests = [GenerationRequest(str(caption), width, height, seed, model.steps, model.guidance)
                    for seed, caption in enumerate(chunk, start=first)]
        for caption, images in zip(chunk, engine.generate_batch(requests, lambda: None, lambda *_: True), strict=True):
            yield caption, images[0]


def two_shape_share(engine: FluxEngine, width: int, height: int, count: int) -> tuple[float, Counter[str]]:
    """How often both shapes of :func:`two_shape_sample`'s ``count`` captions, and the background,
    are read as asked; and how often each kind of miss (:func:`~tests.test_demo_edits.misses`) was
    read in the others."""
    captions = two_shape_sample(count)
    right, missed = 0, Counter()
    for caption, image in drawn(engine, captions, width, height):
        found = misses(caption, read_things(image))
        right += not found
        missed.update(found)
    return right / len(captions) if captions else math.nan, missed


def readings(engine: FluxEngine, width: int, height: int) -> list[tuple[tuple, tuple, float | None]]:
    """(what the checker read, what the caption asked, the edge's width) for each held-out caption."""
    return [(read_scene(image), expected(caption), edge_width(image))
            for caption, image in drawn(engine, held_out_sample(), width, height)]


def edit_scores(weights: Path, per_kind: int, guidance: float, pictures: Path | None) -> None:
    model = demo_editor_settings(weights=str(weights), upscaler=str(weights / "upscaler"),
                                 transformer=str(weights / "editor"), guidance=guidance)
    held = list(enumerate(edits.held_out_edits(per_kind)))  # seeds as the test's: each edit's place in the list
    read, encoded, exact = round_trips(weights, [edit for _, edit in held])
    print(f"the scene given comes back the same through the decoder and upscaler: {read:.2f} from the picture "
          f"reader's latents (what the editor is given), {encoded:.2f} from the VAE encoder's, {exact:.2f} from "
          "exact latents")
    if not (weights / "editor").is_dir():
        print(f"no editing model in {weights} (its editor/ folder): python -m fluxhost.demo.train FOLDER "
              "editor_steps=N trains one")
        return
    engine = FluxEngine(model.weights, model, pictures=FlatPictures())  # as the service builds it
    engine.load()
    print(f"{per_kind} held-out edits a kind, {model.steps} steps, guidance {model.guidance}, 1024x1024")
    print(f"{'kind':>10} {'changed':>7} {'kept':>5}")
    totals = []
    for kind in edits.KINDS:
        judgements = []
        for seed, edit in held:
            if edit.kind != kind:
                continue
            scene = render(edit.caption_before, list(edit.before), 1024, 1024)
            request = GenerationRequest(edit.instruction, 1024, 1024, seed, model.steps, model.guidance,
                                        images=(scene,))
            [[image]] = engine.generate_batch([request], lambda: None, lambda *_: True)
            if pictures is not None and not judgements:
                _save_pair(scene, image, pictures / f"edit-{kind}.png")
                print(f"{kind}: \"{edit.instruction}\" -> {pictures / f'edit-{kind}.png'}")
            judgements.append(judged(edit, read_things(image)))
        totals += judgements
        print(f"{kind:>10} {_share(judgements, 0):>7.2f} {_share(judgements, 1):>5.2f}", flush=True)
    print(f"{'all':>10} {_share(totals, 0):>7.2f} {_share(totals, 1):>5.2f}")


def round_trips(weights: Path, held: list[edits.Edit]) -> tuple[float, float, float]:
    """How often a held-out edit's scene, drawn at 1024x1024, reads the same (background, and each
    shape's colour, place and shape) after the folder's decoder draws it at the demo's 128x128 and
    its upscaler brings it back to 1024x1024, as the service does: from the latents the demo's
    picture reader gives (what the editing model reads of its input), from those of the folder's
    encoder (what real FLUX would give it), and from the scene's exact layout latents. The first
    is as far as an editor can keep a scene through this decoder and upscaler."""
    import torch
    from diffusers import AutoencoderKL

    from fluxhost.demo.train import _pixels, layout_latents
    from fluxhost.engines.upscale import Upscaler

    vae, reader = AutoencoderKL.from_pretrained(weights / "vae").eval(), FlatPictures()
    upscaler = Upscaler(str(weights / "upscaler"), "cpu", torch.float32)

    def reads(latents: torch.Tensor) -> tuple[str, frozenset]:
        decoded = ((vae.decode(latents).sample[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0)
        return read_things(upscaler(Image.fromarray(decoded.numpy()), 1024, 1024))

    read = encoded = exact = 0
    for edit in held:
        scene = render(edit.caption_before, list(edit.before), 1024, 1024)
        want = (edit.background_before, _things(edit.before))
        with torch.inference_mode():
            read += reads(reader.reference(scene, 128, 128)[None]) == want
            small = scene.resize((128, 128), Image.Resampling.BOX)
            encoded += reads(vae.encode(_pixels([small])).latent_dist.mode()) == want
            exact += reads(layout_latents([list(edit.before)], [edit.caption_before], 128, 128)) == want
    return read / len(held), encoded / len(held), exact / len(held)


def _save_pair(given: Image.Image, made: Image.Image, path: Path, side: int = 256) -> None:
    """The picture given and the picture made, side by side at ``side`` pixels each, a gap between."""
    pair = Image.new("RGB", (2 * side + side // 16, side), "white")
    pair.paste(given.resize((side, side), Image.Resampling.LANCZOS), (0, 0))
    pair.paste(made.resize((side, side), Image.Resampling.LANCZOS), (side + side // 16, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    pair.save(path, optimize=True)


def _share(judgements: list[tuple[bool, bool]], index: int) -> float:
    return sum(judgement[index] for judgement in judgements) / len(judgements)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="a demo-model folder (default: the shipped one)")
    parser.add_argument("--ratios", nargs="+", default=list(ASPECT_RATIOS), choices=ASPECT_RATIOS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--edits", action="store_true", help="score the editing model instead")
    parser.add_argument("--per-kind", type=int, default=8, help="--edits: held-out edits of each kind")
    parser.add_argument("--guidance", type=float, default=EDIT_GUIDANCE, help="--edits: the editing guidance")
    parser.add_argument("--pictures", type=Path, help="--edits: save the first edit of each kind here")
    parser.add_argument("--two-shapes", type=int, default=TWO_SHAPE_CAPTIONS,
                        help="captions of two shapes a ratio (more: a smaller standard error, longer)")
    arguments = parser.parse_args()
    import torch  # here: the fluxhost imports above set torch's OpenMP wait policy before it loads

    torch.set_num_threads(arguments.threads)
    if arguments.edits:
        edit_scores(arguments.weights, arguments.per_kind, arguments.guidance, arguments.pictures)
        return
    model = demo_model_settings(weights=str(arguments.weights), upscaler=str(arguments.weights / "upscaler"))
    engine = FluxEngine(model.weights, model)
    engine.load()
    print(f"{len(held_out_sample())} held-out captions a ratio and {arguments.two_shapes} of two shapes, {model.steps} "
          f"steps, guidance {model.guidance}, batches of {BATCH}")
    print(f"{'aspect':>6} {'drawn at':>9} {'background':>10} {'colour':>6} {'place':>6} {'shape':>6} "
          f"{'all four':>8} {'edge px':>7} {'two shapes':>10}")
    missed = {}
    for ratio in arguments.ratios:
        width, height = size_for_aspect_ratio(ratio)
        read = readings(engine, width, height)
        pairs = [(got, want) for got, want, _ in read]
        result = scores(pairs)
        whole = sum(got == want for got, want in pairs) / len(pairs)
        edge = statistics.median(across for _, _, across in read if across is not None)
        drawn_at = "x".join(map(str, render_size(width, height, model.render_pixels, model.render_min_side)))
        two, missed[ratio] = two_shape_share(engine, width, height, arguments.two_shapes)
        print(f"{ratio:>6} {drawn_at:>9} {result['background']:>10.2f} {result['colour']:>6.2f} "
              f"{result['place']:>6.2f} {result['shape']:>6.2f} {whole:>8.2f} {edge:>7.1f} {two:>10.2f}", flush=True)
    print(f"\nwhat the checker read in the two-shape captions it did not read as asked (of {arguments.two_shapes}):")
    for ratio, kinds in missed.items():
        print(f"{ratio:>6} " + (", ".join(f"{kind} {count}" for kind, count in kinds.most_common()) or "none"))


if __name__ == "__main__":
    main()
