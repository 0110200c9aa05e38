"""Writes seeded random LoRA files for the tiny FLUX.1 pipeline of :mod:`fluxhost.testing.tiny`, in
the three key layouts people publish FLUX.1 LoRAs in and diffusers converts on load:

- ``diffusers``: PEFT keys (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``), as
  diffusers' and ai-toolkit's trainers save them; optionally with CLIP text-encoder layers;
- ``kohya``: sd-scripts keys (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` and an
  ``.alpha``), with fused q/k/v. Not ``single_blocks_N_linear1``: diffusers 0.42 splits that one at
  FLUX.1-dev's own widths (3072 and 12288), which a tiny model does not have;
- ``xlabs``: XLabs' keys (``double_blocks.0.processor.qkv_lora1.down.weight``), double blocks only,
  as XLabs publishes them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from fluxhost.engines.base import Adapter
from fluxhost.testing.tiny import HIDDEN

Layout = Literal["diffusers", "kohya", "xlabs"]
LAYOUTS: tuple[Layout, ...] = ("diffusers", "kohya", "xlabs")
INNER = 32  # the tiny transformer's width: 2 heads of 16
MLP = 4 * INNER
UP_SCALE = 0.5  # strong enough that an adapter visibly changes a 4-step picture
CLIP_LAYERS = 2  # CLIP reaches the picture only through its pooled vector: adapt every layer
CLIP_MODULES = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
                "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.out_proj": (HIDDEN, HIDDEN),
                "mlp.fc1": (HIDDEN, 2 * HIDDEN), "mlp.fc2": (2 * HIDDEN, HIDDEN)}


def _pair(generator: torch.Generator, rank: int, in_features: int, out_features: int) -> tuple[torch.Tensor, ...]:
    down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
    up = torch.randn(out_features, rank, generator=generator) * UP_SCALE
    return down, up


def _diffusers(generator: torch.Generator, rank: int, text_encoder: bool) -> dict[str, torch.Tensor]:
    layers = {f"transformer_blocks.0.attn.{name}": (INNER, INNER)
              for name in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")}
    layers |= {"transformer_blocks.0.ff.net.0.proj": (INNER, MLP), "transformer_blocks.0.ff.net.2": (MLP, INNER),
               "single_transformer_blocks.0.attn.to_q": (INNER, INNER),
               "single_transformer_blocks.0.proj_mlp": (INNER, MLP),
               "single_transformer_blocks.0.proj_out": (INNER + MLP, INNER)}
    tensors = {}
    for module, (in_features, out_features) in layers.items():
        down, up = _pair(generator, rank, in_features, out_features)
        tensors[f"transformer.{module}.lora_A.weight"] = down
        tensors[f"transformer.{module}.lora_B.weight"] = up
    if text_encoder:
        for layer in range(CLIP_LAYERS):
            for name, (in_features, out_features) in CLIP_MODULES.items():
                down, up = _pair(generator, rank, in_features, out_features)
                module = f"text_encoder.text_model.encoder.layers.{layer}.{name}"
                tensors[f"{module}.lora_A.weight"] = down
                tensors[f"{module}.lora_B.weight"] = up
    return tensors


def _kohya(generator: torch.Generator, rank: int) -> dict[str, torch.Tensor]:
    layers = {"img_attn_qkv": (INNER, 3 * INNER), "img_attn_proj": (INNER, INNER), "img_mlp_0": (INNER, MLP),
              "img_mlp_2": (MLP, INNER), "txt_attn_qkv": (INNER, 3 * INNER), "txt_attn_proj": (INNER, INNER)}
    names = {f"lora_unet_double_blocks_0_{name}": shape for name, shape in layers.items()}
    names["lora_unet_single_blocks_0_linear2"] = (INNER + MLP, INNER)
    tensors = {}
    for name, (in_features, out_features) in names.items():
        down, up = _pair(generator, rank, in_features, out_features)
        tensors[f"{name}.lora_down.weight"] = down
        tensors[f"{name}.lora_up.weight"] = up
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    return tensors


def _xlabs(generator: torch.Generator, rank: int) -> dict[str, torch.Tensor]:
    layers = {"qkv_lora1": 3 * INNER, "proj_lora1": INNER, "qkv_lora2": 3 * INNER, "proj_lora2": INNER}
    tensors = {}
    for name, out_features in layers.items():
        down, up = _pair(generator, rank, INNER, out_features)
        tensors[f"double_blocks.0.processor.{name}.down.weight"] = down
        tensors[f"double_blocks.0.processor.{name}.up.weight"] = up
    return tensors


def write_lora(path: Path, layout: Layout = "diffusers", seed: int = 0, rank: int = 4,
               text_encoder: bool = False) -> Path:
    """A random LoRA for the tiny FLUX.1 transformer (and, with ``text_encoder``, its CLIP encoder:
    diffusers layout only), the same bytes for the same arguments."""
    generator = torch.Generator().manual_seed(seed)
    if layout == "diffusers":
        tensors = _diffusers(generator, rank, text_encoder)
    elif text_encoder:
        raise ValueError("text-encoder layers are written in the diffusers layout only")
    else:
        tensors = _kohya(generator, rank) if layout == "kohya" else _xlabs(generator, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, str(path))
    return path


def adapter_of(path: Path, weight: float = 1.0) -> Adapter:
    """An engine adapter for a local file, identified by the sha256 of its bytes."""
    return Adapter(str(path), hashlib.sha256(path.read_bytes()).hexdigest(), weight)
