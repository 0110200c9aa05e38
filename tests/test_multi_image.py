"""Several input images in one request (FLUX.1 Kontext references tiled at their own position
offsets, FLUX.2's native reference list) and the FLUX.2 [dev] pipeline, on tiny pipelines."""

import numpy as np
import pytest
from PIL import Image

from fluxhost.engines.base import GenerationRequest, generate
from fluxhost.settings import ModelSettings
from tests.helpers import TORCH_THREADS

pytestmark = pytest.mark.slow  # tiny pipelines: built, loaded and run


def picture(seed: int, width: int = 64, height: int = 64) -> Image.Image:
    """Smooth colours, different for every seed."""
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    weights = np.random.default_rng(seed).uniform(0, 1, (3, 3))
    channels = [weights[c, 0] * x + weights[c, 1] * y + weights[c, 2] * x * y for c in range(3)]
    return Image.fromarray((np.stack(channels, axis=-1) / 3 * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from fluxhost.testing.tiny import ensure_tiny_pipeline

    folder = tmp_path_factory.mktemp("weights")
    return lambda family: ensure_tiny_pipeline(folder / family, family)


@pytest.fixture(scope="module")
def edit_engine(weights):
    """The loaded edit engine of a tiny family, one per family for the module."""
    import torch

    from fluxhost.engines.flux import FluxEngine

    torch.set_num_threads(TORCH_THREADS)
    loaded = {}

    def engine(family: str) -> FluxEngine:
        if family not in loaded:
            engine = FluxEngine(str(weights(family)), ModelSettings(kind="edit", steps=2, guidance=2.5,
                                                                    max_sequence_length=32), device="cpu")
            engine.load()
            loaded[family] = engine
        return loaded[family]

    return engine


def edited(engine, images, steps: int = 2) -> np.ndarray:
    request = GenerationRequest("put them together", 64, 64, 5, steps, 2.5, images=tuple(images))
    [image] = generate(engine, request, lambda: None, lambda *_: True)
    return np.asarray(image, dtype=int)


def assert_every_image_counts(draw, images: list[Image.Image]) -> None:
    """Replacing any one of ``images`` changes what ``draw`` makes of them."""
    first = draw(images)
    for index in range(len(images)):
        replaced = [*images[:index], picture(100 + index, *images[index].size), *images[index + 1:]]
        assert not np.array_equal(draw(replaced), first), f"image {index + 1} of {len(images)} is not used"


def test_references_tile_close_to_square():
    from fluxhost.engines.references import tile_offsets

    assert tile_offsets([(4, 4), (4, 4), (4, 4)]) == [(0, 0), (4, 0), (0, 4)]
    assert tile_offsets([(2, 6), (2, 6)]) == [(0, 0), (2, 0)]  # wide ones stack
    assert tile_offsets([(6, 2), (6, 2)]) == [(0, 0), (0, 2)]  # tall ones go side by side


@pytest.fixture(scope="module")
def kontext(weights):
    from diffusers import FluxKontextPipeline

    from fluxhost.engines.references import taking_several_references

    return taking_several_references(FluxKontextPipeline.from_pretrained(weights("kontext")))


def kontext_edit(pipeline, images) -> np.ndarray:
    """The pipeline at 64x64 with its references at their own sizes: Kontext's own sizes (about a
    megapixel each) take seconds a call on a CPU."""
    import torch

    output = pipeline(image=list(images), prompt="put them together", width=64, height=64, max_area=64 * 64,
                      _auto_resize=False, num_inference_steps=2, guidance_scale=2.5, max_sequence_length=32,
                      generator=[torch.Generator().manual_seed(5)]).images[0]
    return np.asarray(output, dtype=int)


@pytest.mark.parametrize("count", [2, 3])
def test_every_kontext_reference_changes_the_edit(kontext, count):
    assert_every_image_counts(lambda images: kontext_edit(kontext, images),
                              [picture(0), picture(1, 96, 64), picture(2, 64, 128)][:count])


def test_one_kontext_image_is_edited_as_by_diffusers_own_pipeline(kontext):
    from diffusers import FluxKontextPipeline

    plain = FluxKontextPipeline.from_pipe(kontext)
    assert np.array_equal(kontext_edit(kontext, [picture(0)]), kontext_edit(plain, [picture(0)]))


def test_the_kontext_engine_draws_with_two_images(edit_engine):
    """At Kontext's own sizes, one step: the slowest test here (seconds a call)."""
    engine = edit_engine("kontext")
    both = edited(engine, [picture(0), picture(1)], steps=1)
    assert not np.array_equal(both, edited(engine, [picture(0), picture(3)], steps=1))


@pytest.mark.parametrize("family", ["klein", "flux2"])
@pytest.mark.parametrize("count", [2, 3])
def test_every_flux2_reference_changes_the_edit(edit_engine, family, count):
    engine = edit_engine(family)
    assert_every_image_counts(lambda images: edited(engine, images),
                              [picture(0), picture(1, 96, 64), picture(2, 64, 128)][:count])


def test_flux2_dev_draws_with_previews_and_cached_prompts(weights):
    import torch

    from fluxhost.engines.flux import FluxEngine

    torch.set_num_threads(TORCH_THREADS)
    engine = FluxEngine(str(weights("flux2")), ModelSettings(steps=2, guidance=4.0, max_sequence_length=32),
                        device="cpu")
    engine.load()
    assert "FLUX.2 [dev]" in engine.description
    previews = []

    def on_step(_step, _total, preview):
        previews.append(preview())
        return True

    [image] = generate(engine, GenerationRequest("a red fox", 64, 64, 7, 2, 4.0), lambda: None, on_step)
    assert image.size == (64, 64) and [preview.size for preview in previews] == [(16, 16)] * 2
    assert np.asarray(previews[-1]).std() > 0  # a decoded picture, not a blank

    requests = [GenerationRequest(prompt, 64, 64, 7, 2, 4.0) for prompt in ("a red fox", "a blue boat")]
    batched = engine.generate_batch(requests, lambda: None, lambda *_: True)
    # The seed's image, alone or batched, within a level of 255: a batch of two may sum a product in
    # another order (seen on an AVX-512 CPU: one value in 12,288 a level apart).
    assert np.abs(np.asarray(batched[0][0], dtype=int) - np.asarray(image, dtype=int)).max() <= 1
    assert not np.array_equal(np.asarray(batched[1][0]), np.asarray(image))
    assert engine.prompts.hits >= 1 and engine.batches == 2
