"""A model's ``transformer`` setting: a fine-tuned FLUX.1 transformer (as tencent/SRPO publishes
one, a single safetensors file) served in place of the pipeline's, on the tiny FLUX.1 pipeline."""

from pathlib import Path

import numpy as np
import pytest

from fluxhost.engines.base import GenerationRequest, WeightsUnavailable, generate
from fluxhost.settings import ModelSettings
from tests.helpers import TORCH_THREADS


@pytest.fixture(scope="session")
def tuned_transformer(tmp_path_factory) -> Path:
    """A diffusers transformer folder: the tiny pipeline's transformer, drawn from another seed."""
    from fluxhost.testing.tiny import ensure_tiny_pipeline

    return ensure_tiny_pipeline(tmp_path_factory.mktemp("weights") / "tuned-transformer", "fine-tuned-transformer")


def picture(weights: Path, **options) -> tuple[str, np.ndarray]:
    """The engine's description and its 64x64 picture of one prompt and seed."""
    import torch

    from fluxhost.engines.flux import FluxEngine

    torch.set_num_threads(TORCH_THREADS)
    engine = FluxEngine(str(weights), ModelSettings(steps=2, max_sequence_length=32, **options), device="cpu")
    engine.load()
    [image] = generate(engine, GenerationRequest("a red fox", 64, 64, 3, 2, 3.5), lambda: None, lambda *_: True)
    return engine.description, np.asarray(image, dtype=np.int16)


def test_a_transformer_folder_or_single_file_replaces_the_pipelines(tiny_weights, tuned_transformer):
    _description, base = picture(tiny_weights)
    single_file = tuned_transformer / "diffusion_pytorch_model.safetensors"
    description, from_folder = picture(tiny_weights, transformer=str(tuned_transformer))
    _description, from_file = picture(tiny_weights, transformer=str(single_file))
    assert np.abs(from_folder - base).mean() > 1
    assert np.array_equal(from_file, from_folder)
    assert f"with transformer {tuned_transformer}" in description


@pytest.mark.parametrize("missing", ["absent", "absent.safetensors", "tencent/SRPO/absent.safetensors"])
def test_a_transformer_that_cannot_be_loaded_is_named(tiny_weights, tmp_path, missing):
    """A local folder or file that is not there, and (offline, as every test is) a hub file."""
    transformer = missing if "/" in missing else str(tmp_path / missing)
    with pytest.raises(WeightsUnavailable) as raised:
        picture(tiny_weights, transformer=transformer)
    assert raised.value.weights == transformer
