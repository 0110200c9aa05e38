"""What differs between the FLUX pipeline classes the engine serves: how a prompt is encoded (so
its encoding can be cached and batched) and how the latents of a step become an image (so every
class gets step previews).

FLUX.1 pipelines encode with CLIP (pooled) and T5 and pack 16-channel latents in 2x2 patches;
FLUX.2 [dev] (Mistral3) and FLUX.2 [klein] (Qwen3) encode with a language model read at three
layers and keep 128-channel patchified latents under batch-norm statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from diffusers import DiffusionPipeline

Encoding = dict[str, torch.Tensor]
"""One prompt's text-encoder outputs, batch size 1, keyed by the pipeline's argument names."""


class Family(Protocol):
    name: str

    def encode(self, pipeline: DiffusionPipeline, prompt: str, max_sequence_length: int) -> Encoding: ...

    def prompt_arguments(self, pipeline: DiffusionPipeline, encodings: Sequence[Encoding], guidance: float,
                         encode: Callable[[str], Encoding]) -> dict[str, torch.Tensor]:
        """The pipeline's prompt arguments for a batch whose prompts are encoded as ``encodings``."""
        ...

    def image_latents(self, pipeline: DiffusionPipeline, packed: torch.Tensor, height: int,
                      width: int) -> torch.Tensor:
        """A step's packed latents as (batch, channels, h, w) in the space the decoder reads,
        before any scaling the pipeline applies for its VAE."""
        ...

    def scales_for_vae(self) -> bool:
        """Whether the pipeline divides by the VAE's scaling factor (and adds its shift) before decoding."""
        ...


def _batched(encodings: Sequence[Encoding], key: str) -> torch.Tensor:
    return torch.cat([encoding[key] for encoding in encodings], dim=0)


class Flux1:
    name = "FLUX.1"

    def encode(self, pipeline: DiffusionPipeline, prompt: str, max_sequence_length: int) -> Encoding:
        prompt_embeds, pooled, _text_ids = pipeline.encode_prompt(
            prompt=prompt, prompt_2=None, device=pipeline._execution_device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}

    def prompt_arguments(self, pipeline, encodings, guidance, encode):
        return {"prompt_embeds": _batched(encodings, "prompt_embeds"),
                "pooled_prompt_embeds": _batched(encodings, "pooled_prompt_embeds")}

    def negative_arguments(self, negative: Encoding, count: int, guidance: float) -> dict[str, object]:
        """True classifier-free guidance at ``guidance`` away from ``negative``, for each of ``count`` rows."""
        return {"negative_prompt_embeds": negative["prompt_embeds"].expand(count, -1, -1),
                "negative_pooled_prompt_embeds": negative["pooled_prompt_embeds"].expand(count, -1),
                "true_cfg_scale": guidance}

    def image_latents(self, pipeline, packed, height, width):
        return pipeline._unpack_latents(packed, height, width, pipeline.vae_scale_factor)

    def scales_for_vae(self) -> bool:
        return True


class Flux2Dev:
    """FLUX.2 [dev]: guidance is an embedding the transformer reads (guidance-distilled), so there
    is no negative prompt to encode."""

    name = "FLUX.2 [dev]"

    def encode(self, pipeline: DiffusionPipeline, prompt: str, max_sequence_length: int) -> Encoding:
        prompt_embeds, _text_ids = pipeline.encode_prompt(
            prompt=prompt, device=pipeline._execution_device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )
        return {"prompt_embeds": prompt_embeds}

    def prompt_arguments(self, pipeline, encodings, guidance, encode):
        return {"prompt_embeds": _batched(encodings, "prompt_embeds")}

    def image_latents(self, pipeline, packed, height, width):
        # Packed row by row over a (height/16, width/16) grid of 128-channel patches.
        side = pipeline.vae_scale_factor * 2
        batch, _tokens, channels = packed.shape
        grid = packed.reshape(batch, height // side, width // side, channels).permute(0, 3, 1, 2)
        norm = pipeline.vae.bn
        mean = norm.running_mean.view(1, -1, 1, 1).to(grid.device, grid.dtype)
        std = torch.sqrt(norm.running_var.view(1, -1, 1, 1) + pipeline.vae.config.batch_norm_eps).to(grid.device,
                                                                                                     grid.dtype)
        return pipeline._unpatchify_latents(grid * std + mean)

    def scales_for_vae(self) -> bool:
        return False


class Flux2Klein(Flux2Dev):
    """FLUX.2 [klein]: encoded and drawn as [dev] is (its pipeline's ``encode_prompt`` takes the
    same arguments); its undistilled base models take true classifier-free guidance instead."""

    name = "FLUX.2 [klein]"

    def prompt_arguments(self, pipeline, encodings, guidance, encode):
        arguments = {"prompt_embeds": _batched(encodings, "prompt_embeds")}
        if guidance > 1 and not pipeline.config.is_distilled:  # classifier-free guidance: an empty negative
            negative = encode("")["prompt_embeds"]
            arguments["negative_prompt_embeds"] = negative.expand(len(encodings), -1, -1)
        return arguments


def family_of(pipeline: DiffusionPipeline) -> Family:
    name = type(pipeline).__name__
    if name.startswith("Flux2"):
        served = {"Flux2Pipeline": Flux2Dev, "Flux2KleinPipeline": Flux2Klein}
        if name not in served:
            raise ValueError(f"{name} is not served yet (FLUX.2 [dev] and [klein] are)")
        return served[name]()
    if name.startswith("Flux"):
        return Flux1()
    raise ValueError(f"{name} is not a FLUX pipeline")
