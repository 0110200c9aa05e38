"""The FLUX engine's models and options on tiny pipelines: FLUX.1 and FLUX.2 [klein], presets,
memory and speed options, the prompt cache and step previews. GPU-only options are marked."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fluxhost import DEFAULT_MODEL, family
from fluxhost.demo import serves_demo
from fluxhost.engines.base import GenerationRequest, WeightsUnavailable, generate
from fluxhost.models import PRESETS, load_failure, served_models
from fluxhost.settings import ModelSettings, Settings
from fluxhost.signing import KeyMode
from fluxhost.tools import Catalog
from tests.helpers import SLUG, TORCH_THREADS, LiveServer, ProtocolClient

KLEIN = "black-forest-labs/flux-2-klein"
FLUXHOST = str(Path(sys.executable).with_name("fluxhost"))


@pytest.fixture(scope="session")
def tiny_klein(tmp_path_factory) -> Path:
    from fluxhost.testing.tiny import ensure_tiny_pipeline

    return ensure_tiny_pipeline(tmp_path_factory.mktemp("weights") / "tiny-klein", "klein")


@pytest.fixture(scope="session")
def tiny_preview_decoder(tmp_path_factory) -> Path:
    from fluxhost.testing.tiny import ensure_tiny_pipeline

    return ensure_tiny_pipeline(tmp_path_factory.mktemp("weights") / "tiny-taef", "preview-decoder")


def run_once(weights: Path, **options) -> tuple[Any, list, list]:
    """Load ``weights`` with ``options`` and make one 256x256 image, rendering a preview each step."""
    import torch

    from fluxhost.engines.flux import FluxEngine

    torch.set_num_threads(TORCH_THREADS)
    engine = FluxEngine(str(weights), ModelSettings(steps=3, max_sequence_length=32, **options), device="cpu")
    engine.load()
    previews = []

    def on_step(step, total, preview):
        previews.append(preview().size)
        return True

    guidance = 1.0 if engine.family.name.startswith("FLUX.2") else 3.5
    images = generate(engine, GenerationRequest("a red fox", 256, 256, 7, 3, guidance), lambda: None, on_step)
    return engine, images, previews


@pytest.mark.parametrize("options", [
    {},
    {"offload": "group"},
    {"offload": "model"},  # nothing to move on a CPU: a warning, and it runs
    {"vae_tiling": True, "vae_slicing": True},
    {"attention_backend": "native"},
    {"cache": "first_block", "cache_threshold": 0.2},
    {"cache": "taylorseer"},
    {"cache": "magcache"},
    {"warmup_sizes": ["256x256"]},
], ids=lambda options: ",".join(options) or "plain")
def test_flux1_options_run(tiny_weights, options):
    engine, [image], previews = run_once(tiny_weights, **options)
    assert image.size == (256, 256) and previews == [(64, 64)] * 3
    assert engine.batches == 1 + len(options.get("warmup_sizes", []))


def test_a_generation_that_failed_midway_leaves_nothing_for_the_next_task(tiny_weights, cache="magcache"):
    """A step cache keeps its counters and residuals through a call, reset at its end: a call that
    raised (out of GPU memory) left them, and the next task drew from them."""
    from fluxhost.engines.flux import FluxEngine

    engine = FluxEngine(str(tiny_weights), ModelSettings(steps=8, max_sequence_length=32, cache=cache), device="cpu")
    engine.load()
    heron = GenerationRequest("a blue heron", 64, 64, 11, 8, 3.5)

    def out_of_memory_at_step_5(index, step, total, preview):
        if step == 5:
            raise RuntimeError("CUDA out of memory (as a GPU says it)")
        return True

    with pytest.raises(RuntimeError, match="out of memory"):
        engine.generate_batch([GenerationRequest("a red fox", 64, 64, 7, 8, 3.5)], lambda: None,
                              out_of_memory_at_step_5)
    after_the_failure, again = (np.asarray(generate(engine, heron, lambda: None, lambda *_: True)[0])
                                for _ in range(2))
    assert np.array_equal(after_the_failure, again)


def test_klein_runs_with_previews_and_options(tiny_klein):
    engine, [image], previews = run_once(tiny_klein, cache="taylorseer", vae_tiling=True)
    assert engine.family.name == "FLUX.2 [klein]" and image.size == (256, 256)
    assert previews == [(64, 64)] * 3


def test_a_tiny_autoencoder_draws_the_previews(tiny_weights, tiny_preview_decoder):
    _engine, _images, previews = run_once(tiny_weights, preview_decoder=str(tiny_preview_decoder))
    assert previews == [(256, 256)] * 3  # full size: the tiny decoder is cheap


@pytest.mark.parametrize("cache", ["magcache", "first_block"])
def test_caches_without_klein_support_are_refused_for_it(tiny_klein, cache):
    with pytest.raises(ValueError, match=cache):
        run_once(tiny_klein, cache=cache)


def test_positioned_noise_is_the_seeds_noise_plus_ramps_across_and_down(tiny_weights):
    import torch
    from diffusers import FluxPipeline

    engine, [image], _previews = run_once(tiny_weights, noise_mean="positions")
    assert image.size == (256, 256)
    pipeline = engine._pipeline

    def noise(seeds):
        return engine._positioned_noise([torch.Generator().manual_seed(seed) for seed in seeds], 64, 96)

    alone, batched = noise([7]), noise([3, 7])
    assert torch.equal(batched[1:], alone)  # a seed starts from the same noise, alone or batched
    plain, _ids = pipeline.prepare_latents(1, 16, 64, 96, torch.float32, "cpu", [torch.Generator().manual_seed(7)])
    mean = FluxPipeline._unpack_latents(alone - plain, 64, 96, pipeline.vae_scale_factor)[0]
    assert torch.allclose(mean[:8], torch.linspace(-1, 1, 12).expand(8, 8, 12), atol=1e-5)  # left to right
    assert torch.allclose(mean[8:], torch.linspace(-1, 1, 8)[:, None].expand(8, 8, 12), atol=1e-5)  # top to bottom

    # an editor trained from it also starts from the picture to edit: its latents, at the picture's size
    reference = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(1))
    generators = [torch.Generator().manual_seed(seed) for seed in (3, 7)]
    with_reference = engine._positioned_noise(generators, 64, 96, reference)
    added = FluxPipeline._unpack_latents(with_reference - batched, 64, 96, pipeline.vae_scale_factor)
    assert torch.allclose(added, reference.expand(2, -1, -1, -1), atol=1e-5)
    flat = torch.linspace(-2, 2, 16).view(1, 16, 1, 1)  # a plain background, read at another size
    resized = engine._positioned_noise([torch.Generator().manual_seed(7)], 64, 96, flat.expand(1, 16, 4, 6))
    added = FluxPipeline._unpack_latents(resized - alone, 64, 96, pipeline.vae_scale_factor)
    assert torch.allclose(added, flat.expand(1, 16, 8, 12), atol=1e-5)


def test_noise_from_the_picture_to_edit_needs_a_picture_reader(tiny_weights):
    with pytest.raises(ValueError, match="positions-and-reference is for a model with a picture reader"):
        run_once(tiny_weights, noise_mean="positions-and-reference")


@pytest.mark.parametrize("option", [{"noise_mean": "positions"}, {"negative_prompt": ""}], ids=str)
def test_flux1_only_options_are_refused_for_klein(tiny_klein, option):
    with pytest.raises(ValueError, match=f"{next(iter(option))} is for FLUX.1"):
        run_once(tiny_klein, **option)


def test_a_negative_prompt_guides_away_from_it(tiny_weights):
    """True classifier-free guidance: the unguided picture differs from the guided ones, and
    guiding away from another prompt differs from guiding away from none."""
    pictures = []
    for negative in (None, "", "a blue whale"):
        _engine, [image], _previews = run_once(tiny_weights, negative_prompt=negative)
        pictures.append(np.asarray(image, dtype=np.int16))
    unguided, from_nothing, from_whale = pictures
    assert np.abs(unguided - from_nothing).mean() > 1 and np.abs(from_nothing - from_whale).mean() > 1


def test_an_identical_prompt_reuses_its_encoding(tiny_weights):
    engine, _images, _previews = run_once(tiny_weights)
    request = GenerationRequest("a red fox", 256, 256, 8, 3, 3.5)
    generate(engine, request, lambda: None, lambda *_: True)
    generate(engine, GenerationRequest("a heron", 256, 256, 8, 3, 3.5), lambda: None, lambda *_: True)
    assert (engine.prompts.hits, engine.prompts.misses) == (1, 2)


@pytest.mark.quant
def test_int8_weights_with_torchao(tiny_weights):
    pytest.importorskip("torchao")
    _engine, [image], _previews = run_once(tiny_weights, quantize="int8")
    assert image.size == (256, 256)


@pytest.mark.gpu
@pytest.mark.parametrize("options", [{"compile": True, "warmup_sizes": ["256x256"]}, {"quantize": "fp8"},
                                     {"quantize": "nf4"}, {"offload": "model"}, {"offload": "sequential"}])
def test_gpu_options_run(tiny_weights, options):
    from fluxhost.engines.flux import FluxEngine

    engine = FluxEngine(str(tiny_weights), ModelSettings(steps=3, max_sequence_length=32, **options), device="cuda")
    engine.load()
    [image] = generate(engine, GenerationRequest("a red fox", 256, 256, 7, 3, 3.5), lambda: None, lambda *_: True)
    assert image.size == (256, 256)


def test_klein_serves_under_its_own_slug(make_settings, tiny_klein):
    klein = ModelSettings(weights=str(tiny_klein), steps=2, guidance=1.0, max_sequence_length=32,
                          exposed_inputs=["steps"])
    settings = make_settings()
    with LiveServer(make_settings(models={**settings.models, KLEIN: klein})) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        listed = client.call("Tool/List", {})
        assert {f"{tool['slugowner']}/{tool['slugproject']}" for tool in listed["tool"]} == {SLUG, KLEIN}
        [detail] = client.call("Tool/Detail", {"slugowner": "black-forest-labs", "slugproject": "flux-2-klein"})["tool"]
        assert "steps" in [item["id"] for item in detail["parameters"][0]["items"]]
        run = client.call(f"Run/{KLEIN}", {"prompt": "a heron", "aspectRatio": "1:1", "steps": "3"})
        task = client.wait(run["taskid"])
    assert task["pexit"] == "0" and len(task["outputs"]) == 1
    assert "FLUX.2 [klein]" in task["debugoutput"] and "3 steps" in task["debugoutput"]


def test_presets_serve_by_name_and_behind_the_seed_slug():
    settings = Settings(presets="schnell, klein", flux_pro_model="dev")
    models = served_models(settings)
    assert models[PRESETS["schnell"].slug].weights == "black-forest-labs/FLUX.1-schnell"
    assert models[PRESETS["schnell"].slug].steps == 4 and models[PRESETS["klein"].slug].steps == 4
    seed = models[DEFAULT_MODEL]
    assert (seed.weights, seed.steps, seed.guidance, seed.exposed_inputs) == ("black-forest-labs/FLUX.1-dev", 28, 3.5,
                                                                              [])
    assert seed.setting == "FLUXHOST_FLUX_PRO_MODEL"
    tools = {tool.slug: tool for tool in Catalog.from_models(models).tools}
    # The presets' own slugs, and the hosted family: each tool on its family's preset, or the demo model.
    assert set(tools) == {DEFAULT_MODEL, PRESETS["schnell"].slug, PRESETS["klein"].slug} | set(family.BY_SLUG)
    assert tools[PRESETS["schnell"].slug].tuning == ("steps",)
    assert models["wiro/text-to-image-flux-fast"].weights == "black-forest-labs/FLUX.1-schnell"
    assert models["black-forest-labs/flux-2-pro"].weights == "black-forest-labs/FLUX.2-klein-4B"
    assert serves_demo(models["wiro/text-to-image-flux"]) and models["wiroai/flux-upscaler"].kind == "upscale"
    table = served_models(Settings(models={"acme/one": {"steps": 2}}, presets="klein"))
    assert set(table) == {"acme/one", PRESETS["klein"].slug} | {member.slug for member in PRESETS["klein"].members}
    assert served_models(Settings(flux_pro_model="/models/my-flux"))[DEFAULT_MODEL].weights == "/models/my-flux"
    with pytest.raises(ValueError, match="unknown preset 'turbo'"):
        served_models(Settings(presets="turbo"))
    with pytest.raises(ValueError, match="devices must not repeat"):
        Settings(devices="cuda:0,cuda:0")


def test_missing_preset_weights_name_the_setting_and_the_pull():
    from fluxhost.engines.flux import FluxEngine

    preset = PRESETS["schnell"]
    engine = FluxEngine(preset.weights, preset.model_settings("FLUXHOST_PRESETS"), device="cpu")
    with pytest.raises(WeightsUnavailable) as unavailable:
        engine.load()  # offline, and not in the cache
    assert unavailable.value.weights == preset.weights
    failure = WeightsUnavailable(preset.weights, "We couldn't connect to the hub")
    message = load_failure(preset.model_settings("FLUXHOST_PRESETS"), failure)
    assert message == ("weights 'black-forest-labs/FLUX.1-schnell' could not be loaded (We couldn't connect to the "
                       "hub). Download them first: fluxhost models pull schnell, or take 'schnell' out of "
                       "FLUXHOST_PRESETS.")
    behind_the_seed = preset.model_settings("FLUXHOST_FLUX_PRO_MODEL")
    assert load_failure(behind_the_seed, WeightsUnavailable(preset.weights, "gone")).endswith(
        "Set FLUXHOST_FLUX_PRO_MODEL to a diffusers FLUX folder or Hugging Face hub id, or download them first: "
        "fluxhost models pull schnell.")


@pytest.mark.slow  # `fluxhost` processes
def test_models_pull_offline_says_why(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([FLUXHOST, "models", "pull", "schnell"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "FLUX.1 [schnell]" in done.stdout and "offline mode is on" in done.stdout
