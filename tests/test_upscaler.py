"""The upscaler tool's engines: FLUX.1 with an upscaling ControlNet (tiny FLUX.1 and a tiny
ControlNet, loaded from folders as real weights are), and resampling on the demo model."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fluxhost.demo import demo_model_settings
from fluxhost.demo.scenes import COLOURS
from fluxhost.engines.base import ControlSettings, GenerationRequest, GenerationStopped, WeightsUnavailable, generate
from fluxhost.settings import ModelSettings, Settings
from tests.helpers import TORCH_THREADS

CONTROLNET = "jasperai/Flux.1-dev-Controlnet-Upscaler"


@pytest.fixture(scope="session")
def tiny_controlnet(tmp_path_factory) -> Path:
    from fluxhost.testing.tiny import ensure_tiny_pipeline

    return ensure_tiny_pipeline(tmp_path_factory.mktemp("weights") / "tiny-controlnet", "controlnet-upscaler")


def loaded(model: ModelSettings, tmp_path: Path):
    """The engine the runtime builds for ``model`` on the CPU, loaded."""
    import torch

    from fluxhost.runtime.host import build_engine

    torch.set_num_threads(TORCH_THREADS)
    engine = build_engine(model, Settings(data_dir=tmp_path), "cpu")
    engine.load()
    return engine


def small_picture(colour: str = "red") -> Image.Image:
    """32x32: a disc on a plain background, in the demo model's colours (its upscaler learned those)."""
    picture = Image.new("RGB", (32, 32), COLOURS["blue"])
    ImageDraw.Draw(picture).ellipse((6, 6, 26, 26), fill=COLOURS[colour])
    return picture


def upscale(engine, picture: Image.Image, control: ControlSettings | None = None, on_step=lambda *_: True):
    request = GenerationRequest("", 64, 64, 5, 2, 3.5, images=(picture,), control=control)
    [image] = generate(engine, request, lambda: None, on_step)
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def controlnet_engine(tiny_weights, tiny_controlnet, tmp_path):
    return loaded(ModelSettings(weights=str(tiny_weights), kind="upscale", controlnet=str(tiny_controlnet), steps=2,
                                max_sequence_length=32), tmp_path)


def test_the_controlnet_upscales_twofold_with_previews(controlnet_engine, tiny_controlnet):
    from fluxhost.engines.upscaling import ControlNetUpscaleEngine

    previews = []

    def on_step(step, total, preview):
        previews.append((step, total, preview().size))
        return True

    image = upscale(controlnet_engine, small_picture(), on_step=on_step)
    assert isinstance(controlnet_engine, ControlNetUpscaleEngine)
    assert image.shape == (64, 64, 3)
    assert previews == [(1, 2, (16, 16)), (2, 2, (16, 16))]
    assert f"ControlNet {tiny_controlnet}" in controlnet_engine.description


def test_the_input_and_the_control_settings_steer_the_picture(controlnet_engine):
    plain = upscale(controlnet_engine, small_picture())
    assert np.array_equal(upscale(controlnet_engine, small_picture()), plain)  # seeded: the same picture again
    assert np.abs(upscale(controlnet_engine, small_picture("yellow")) - plain).mean() > 1
    for control in (ControlSettings(conditioning_scale=0.3), ControlSettings(guidance_start=0.5),
                    ControlSettings(guidance_end=0.5)):
        assert np.abs(upscale(controlnet_engine, small_picture(), control) - plain).mean() > 1, control


def test_the_controlnet_pipeline_keeps_the_models_dtype(tiny_weights, tiny_controlnet, tmp_path):
    import torch

    engine = loaded(ModelSettings(weights=str(tiny_weights), kind="upscale", controlnet=str(tiny_controlnet),
                                  dtype="bfloat16", max_sequence_length=32), tmp_path)
    pipeline = engine._pipeline
    assert pipeline.transformer.dtype == pipeline.controlnet.dtype == pipeline.vae.dtype == torch.bfloat16


def test_a_false_step_callback_stops_the_upscale(controlnet_engine):
    steps = []

    def on_step(step, total, preview):
        steps.append(step)
        return False

    with pytest.raises(GenerationStopped):
        upscale(controlnet_engine, small_picture(), on_step=on_step)
    assert steps == [1]


def test_an_upscale_without_an_input_image_is_refused(controlnet_engine):
    with pytest.raises(ValueError, match="needs an input image"):
        generate(controlnet_engine, GenerationRequest("", 64, 64, 5, 2, 3.5), lambda: None, lambda *_: True)


def test_a_missing_controlnet_is_named(tiny_weights, tmp_path):
    missing = str(tmp_path / "no-controlnet")
    with pytest.raises(WeightsUnavailable) as raised:
        loaded(ModelSettings(weights=str(tiny_weights), kind="upscale", controlnet=missing, max_sequence_length=32),
               tmp_path)
    assert raised.value.weights == missing


def test_warm_up_runs_the_upscale(tiny_weights, tiny_controlnet, tmp_path):
    engine = loaded(ModelSettings(weights=str(tiny_weights), kind="upscale", controlnet=str(tiny_controlnet), steps=2,
                                  max_sequence_length=32, warmup_sizes=["64x64"]), tmp_path)
    assert engine.batches == 1


def test_the_demo_model_resamples_the_input_to_the_asked_size(tmp_path):
    from fluxhost.engines.upscaling import ResamplingUpscaleEngine

    engine = loaded(demo_model_settings(kind="upscale"), tmp_path)
    assert isinstance(engine, ResamplingUpscaleEngine)
    assert "do nothing" in engine.description
    picture = small_picture()
    image = upscale(engine, picture)
    assert image.shape == (64, 64, 3)
    shrunk = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((32, 32), Image.Resampling.BOX), np.int16)
    assert np.abs(shrunk - np.asarray(picture, np.int16)).mean() < 8  # the same picture, larger
    other_settings = GenerationRequest("a cat", 64, 64, 9, 20, 1.0, images=(picture,),
                                       control=ControlSettings(0.1, 0.2, 0.3))
    [again] = generate(engine, other_settings, lambda: None, lambda *_: True)
    assert np.array_equal(np.asarray(again, np.int16), image)  # steps, seed and control change nothing
    with pytest.raises(GenerationStopped):
        upscale(engine, picture, on_step=lambda *_: False)
