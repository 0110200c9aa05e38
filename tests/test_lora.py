"""LoRA adapters in the FLUX.1 engine, on the tiny pipeline with seeded random LoRA files in the
diffusers/PEFT, kohya and XLabs layouts: an adapter changes the picture and leaves nothing behind,
adapters swap and combine at their weights, the loaded ones are bounded, a file that is not a LoRA
for the model is refused with the pipeline untouched, and batches never mix adapters."""

from pathlib import Path

import numpy as np
import pytest

from fluxhost.engines.base import Adapter, GenerationRequest, batch_key
from fluxhost.settings import ModelSettings
from tests.helpers import TORCH_THREADS

CLEARLY = 2.0  # mean grey levels: far above what reordered float sums move


@pytest.fixture
def make_engine(tiny_weights):
    import torch

    from fluxhost.engines.flux import FluxEngine

    torch.set_num_threads(TORCH_THREADS)

    def make(**options):
        engine = FluxEngine(str(tiny_weights), ModelSettings(steps=2, max_sequence_length=32, **options),
                            device="cpu")
        engine.load()
        return engine

    return make


@pytest.fixture
def engine(make_engine):
    return make_engine()


@pytest.fixture
def lora(tmp_path):
    from fluxhost.testing.loras import adapter_of, write_lora

    def make(seed: int, layout: str = "diffusers", weight: float = 1.0, **options) -> Adapter:
        path = tmp_path / f"{layout}-{seed}-{'-'.join(options)}.safetensors"
        return adapter_of(write_lora(path, layout, seed, **options), weight)

    return make


def picture(engine, *adapters: Adapter, prompt: str = "a red fox") -> np.ndarray:
    from fluxhost.engines.base import generate

    request = GenerationRequest(prompt, 64, 64, 7, 2, 3.5, adapters=adapters)
    [image] = generate(engine, request, lambda: None, lambda *_: True)
    return np.asarray(image, dtype=int)


def differs(first: np.ndarray, second: np.ndarray) -> bool:
    return np.abs(first - second).mean() > CLEARLY


def test_batch_key_differs_by_adapter_and_weight():
    plain = GenerationRequest("a fox", 64, 64, 1, 2, 3.5)
    one = GenerationRequest("a heron", 64, 64, 2, 2, 3.5, adapters=(Adapter("/a.safetensors", "aa"),))
    assert batch_key(plain) != batch_key(one)
    assert batch_key(one) == batch_key(GenerationRequest("a fox", 64, 64, 9, 2, 3.5,
                                                         adapters=(Adapter("/elsewhere.safetensors", "aa"),)))
    assert batch_key(one) != batch_key(GenerationRequest("a fox", 64, 64, 9, 2, 3.5,
                                                         adapters=(Adapter("/a.safetensors", "aa", 0.5),)))
    assert batch_key(one) != batch_key(GenerationRequest("a fox", 64, 64, 9, 2, 3.5,
                                                         adapters=(Adapter("/a.safetensors", "bb"),)))


@pytest.mark.parametrize("layout", ["diffusers", "kohya", "xlabs"])
def test_an_adapter_changes_the_picture_and_leaves_nothing_behind(engine, lora, layout):
    baseline = picture(engine)
    with_it = picture(engine, lora(1, layout))
    assert differs(with_it, baseline)
    assert np.array_equal(picture(engine), baseline)  # bit for bit: as if no LoRA had ever been loaded
    assert np.array_equal(picture(engine, lora(1, layout)), with_it)
    assert engine.adapters.loads == 1


def test_adapters_one_after_another_each_give_what_they_give_alone(make_engine, lora):
    first, second = lora(1), lora(2, "kohya")
    engine = make_engine()
    first_alone = picture(engine, first)
    second_after_first = picture(engine, second)
    assert differs(first_alone, second_after_first)
    assert np.array_equal(picture(engine, first), first_alone)
    assert np.array_equal(picture(make_engine(), second), second_after_first)


def test_two_adapters_apply_together_each_at_its_weight(engine, lora):
    baseline = picture(engine)
    fox, heron = lora(1, weight=0.8), lora(2, "xlabs", weight=0.6)
    together = picture(engine, fox, heron)
    assert differs(together, picture(engine, fox)) and differs(together, picture(engine, heron))
    swapped = picture(engine, lora(1, weight=0.6), lora(2, "xlabs", weight=0.8))
    assert differs(together, swapped)
    assert np.array_equal(picture(engine, fox, heron), together)
    assert np.array_equal(picture(engine), baseline)


def test_the_least_recently_used_adapter_goes_beyond_the_count(make_engine, lora):
    engine = make_engine(lora_cache=2)
    adapters = [lora(seed) for seed in (1, 2, 3)]
    first = picture(engine, adapters[0])
    picture(engine, adapters[1])
    picture(engine, adapters[0])  # now the second is the least recently used
    picture(engine, adapters[2])
    assert engine.adapters.loaded == [adapters[0].digest, adapters[2].digest]
    assert len(engine._pipeline.get_list_adapters()["transformer"]) == 2
    assert np.array_equal(picture(engine, adapters[1]), picture(make_engine(), adapters[1]))
    assert engine.adapters.loads == 4
    assert np.array_equal(picture(engine, adapters[0]), first)


def test_the_memory_bound_keeps_only_the_running_adapters(make_engine, lora):
    engine = make_engine(lora_cache_mb=0)
    first, second = lora(1), lora(2)
    picture(engine, first, second)
    assert engine.adapters.loaded == [first.digest, second.digest]  # needed now, whatever the bound
    picture(engine, second)
    assert engine.adapters.loaded == [second.digest]


def _not_safetensors(path: Path) -> None:
    path.write_text("these are not the weights you are looking for")


def _pickle(path: Path) -> None:
    import torch

    torch.save({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32)}, path)


def _other_model(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 320),
               "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(320, 4)}, str(path))


def _full_size_flux(path: Path) -> None:
    """A FLUX.1-dev LoRA's shapes: diffusers would widen the tiny model's layers to take it."""
    import torch
    from safetensors.torch import save_file

    save_file({"transformer.x_embedder.lora_A.weight": torch.ones(4, 128),
               "transformer.x_embedder.lora_B.weight": torch.ones(3072, 4)}, str(path))


def _flat_lora(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"transformer.x_embedder.lora_A.weight": torch.ones(64),
               "transformer.x_embedder.lora_B.weight": torch.ones(32, 4)}, str(path))


def _unknown_kohya_keys(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"lora_unet_mystery_block.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_mystery_block.lora_up.weight": torch.zeros(32, 4)}, str(path))


def _no_lora(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"transformer.x_embedder.weight": torch.zeros(32, 64)}, str(path))


@pytest.mark.parametrize(("write", "says"), [
    (_not_safetensors, "not a readable .safetensors file"),
    (_pickle, "not a readable .safetensors file"),
    (_other_model, "unet has no linear layer down_blocks.0.attentions.0.proj_in"),
    (_full_size_flux, "transformer.x_embedder.lora_A.weight has shape (4, 128), the layer takes 64 features"),
    (_flat_lora, "transformer.x_embedder.lora_A.weight has shape (64,), the layer takes 64 features"),
    (_unknown_kohya_keys, "not a LoRA in a layout diffusers reads"),
    (_no_lora, "transformer.x_embedder.weight would overwrite the model's own weights"),
], ids=lambda value: getattr(value, "__name__", "")[1:])
def test_a_file_that_is_no_lora_for_the_model_is_refused_and_changes_nothing(engine, lora, tmp_path, write, says):
    from fluxhost.engines.adapters import AdapterRefused

    baseline, good = picture(engine), lora(1)
    with_good = picture(engine, good)
    path = tmp_path / "bad.safetensors"
    write(path)
    bad = Adapter(str(path), "bad0" * 16)
    with pytest.raises(AdapterRefused, match=r"^the adapter bad\.safetensors ") as refused:
        picture(engine, good, bad)
    assert says in str(refused.value) and str(tmp_path) not in str(refused.value)  # no server folder shown
    assert tuple(engine._pipeline.transformer.x_embedder.weight.shape) == (32, 64)
    assert engine._pipeline.transformer.config.in_channels == 64
    assert engine._pipeline.get_list_adapters()["transformer"] == [f"lora_{good.digest[:16]}"]
    assert np.array_equal(picture(engine), baseline)
    assert np.array_equal(picture(engine, good), with_good)


def test_text_encoder_layers_apply_and_keep_their_own_prompt_encodings(engine, lora):
    baseline = picture(engine)
    transformer_only = picture(engine, lora(3))  # encodes the prompt as the plain model does
    with_text_encoder = lora(3, text_encoder=True)  # the same transformer layers, plus CLIP's
    assert engine.adapters.text_encoder_key([with_text_encoder]) == ()
    both = picture(engine, with_text_encoder)
    assert engine.adapters.text_encoder_key([with_text_encoder]) == ((with_text_encoder.digest, 1.0),)
    assert differs(both, transformer_only)
    assert np.array_equal(picture(engine), baseline)
    misses = engine.prompts.misses
    assert np.array_equal(picture(engine, with_text_encoder), both)
    assert engine.prompts.misses == misses  # its encoding was kept under its own key


def test_hotswap_slots_give_what_named_adapters_give(make_engine, lora):
    """The compiled model's way, without the compiling: adapters hotswapped into slots, weights and
    empty slots set through the scale tensors."""
    from fluxhost.engines.adapters import HotswapSlots

    named = make_engine()
    fox, heron, kohya = lora(1, weight=0.8), lora(2, "xlabs", weight=0.6), lora(3, "kohya")
    expected = [picture(named), picture(named, fox), picture(named, fox, heron), picture(named, kohya),
                picture(named, kohya, heron)]
    engine = make_engine()
    engine.adapters = HotswapSlots(engine._pipeline)
    swapped = [picture(engine), picture(engine, fox), picture(engine, fox, heron), picture(engine, kohya),
               picture(engine, kohya, heron)]
    assert np.array_equal(swapped[0], expected[0])
    for got, want in zip(swapped[1:], expected[1:], strict=True):
        assert np.abs(got - want).max() <= 1  # zero-padded ranks: the same sums, maybe another order
    assert np.array_equal(picture(engine), expected[0])
    assert len(engine._pipeline.get_list_adapters()["transformer"]) == 2  # two slots, five adapters


@pytest.mark.gpu
def test_a_compiled_model_swaps_adapters_without_recompiling(tiny_weights, lora):
    import torch._dynamo.utils

    from fluxhost.engines.flux import FluxEngine

    engine = FluxEngine(str(tiny_weights), ModelSettings(steps=2, max_sequence_length=32, compile=True),
                        device="cuda")
    engine.load()
    baseline = picture(engine)
    first = picture(engine, lora(1))  # compiles again, once: the slot's layers are new
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for adapter in (lora(2), lora(3, "kohya", weight=0.7), lora(1, "xlabs")):
        assert differs(picture(engine, adapter), baseline)
    assert np.abs(picture(engine) - baseline).max() <= 1
    assert np.abs(picture(engine, lora(1)) - first).max() <= 1
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert engine.adapters.loads == 5 and len(engine._pipeline.get_list_adapters()["transformer"]) == 1
