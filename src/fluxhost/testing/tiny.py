"""Builds tiny FLUX pipelines with random weights from configs alone (no download).

The folders it writes are ordinary diffusers pipelines with the real models' shapes where they
matter (FLUX.1: 16 latent channels, 4 VAE levels so a scale factor of 8, 2x2 packed patches;
FLUX.2 [klein]: 32 latent channels patchified to 128, a Qwen3 text encoder read at layers 9, 18
and 27; FLUX.2 [dev]: the same latents, a Mistral3 text encoder read at layers 10, 20 and 30 and a
guidance embedding), so the engine loads them with ``from_pretrained`` exactly as it loads real weights. They
draw noise: they exist so that tests and the offline demo run the real code path on a CPU.
"""

from __future__ import annotations

import string
from functools import partial
from pathlib import Path

import huggingface_hub
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderTiny,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    FluxControlNetModel,
    FluxKontextPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralVisionConfig,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from fluxhost.tools import DEFAULT_PROMPT

HIDDEN = 32  # text encoders' width: the transformer's joint and pooled projection sizes
BUILD_SEED = 0


def _training_text() -> list[str]:
    """Words the tokenizers learn: every printable character, so any prompt tokenizes."""
    words = DEFAULT_PROMPT.lower().replace(",", " ").replace(".", " ").split()
    return list(string.printable) + words * 4


def _tokenizers() -> tuple[CLIPTokenizer, T5TokenizerFast]:
    corpus = [_training_text()]
    clip = CLIPTokenizer().train_new_from_iterator(corpus, vocab_size=400)
    clip.model_max_length = 77  # else the pipeline pads to a huge default and overflows
    t5 = T5TokenizerFast().train_new_from_iterator(corpus, vocab_size=300)
    return clip, t5


def build_tiny_pipeline() -> FluxPipeline:
    torch.manual_seed(BUILD_SEED)
    clip_tokenizer, t5_tokenizer = _tokenizers()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=HIDDEN,
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=HIDDEN,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=t5_tokenizer.pad_token_id,
            eos_token_id=t5_tokenizer.eos_token_id,
            decoder_start_token_id=t5_tokenizer.pad_token_id,
        )
    )
    transformer = build_tiny_transformer()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),  # 4 levels: scale factor 8
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        mid_block_add_attention=False,  # at a megapixel its attention alone would cost seconds a picture
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    return FluxPipeline(
        scheduler=_scheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


# The tiny FLUX.1 transformer's shape, which a ControlNet for it shares.
_TINY_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels packed in 2x2 patches
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=HIDDEN,
    pooled_projection_dim=HIDDEN,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
)


def build_tiny_transformer(seed: int | None = None) -> FluxTransformer2DModel:
    """The tiny FLUX.1 pipeline's transformer; with a ``seed``, drawn afresh from it (a stand-in for
    a fine-tune: same shapes, other weights)."""
    if seed is not None:
        torch.manual_seed(seed)
    return FluxTransformer2DModel(**_TINY_TRANSFORMER)


def build_tiny_controlnet_upscaler() -> FluxControlNetModel:
    """A FluxControlNetModel for the tiny FLUX.1 transformer, taking its control image through the
    VAE as jasperai/Flux.1-dev-Controlnet-Upscaler does. A new ControlNet's output layers start at
    zero (it changes nothing until trained); here they are random too, so that the control image and
    the control settings visibly change the picture."""
    torch.manual_seed(BUILD_SEED)
    controlnet = FluxControlNetModel(**_TINY_TRANSFORMER)
    zero_started = [controlnet.controlnet_x_embedder, *controlnet.controlnet_blocks,
                    *controlnet.controlnet_single_blocks]
    with torch.no_grad():
        for layer in zero_started:
            torch.nn.init.normal_(layer.weight, std=0.2)
    return controlnet


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


KLEIN_TEXT_LAYERS = 27  # the pipeline reads hidden states 9, 18 and 27
# Qwen3's chat markup, reduced to what the pipeline's apply_chat_template call needs.
KLEIN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_klein_pipeline() -> Flux2KleinPipeline:
    torch.manual_seed(BUILD_SEED)
    tokenizer = Qwen2Tokenizer().train_new_from_iterator([_training_text()], vocab_size=300)
    tokenizer.chat_template = KLEIN_CHAT_TEMPLATE
    hidden = 16
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(vocab_size=len(tokenizer) + 8, hidden_size=hidden, intermediate_size=32,
                    num_hidden_layers=KLEIN_TEXT_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                    max_position_embeddings=512, tie_word_embeddings=True)
    )
    transformer = _flux2_transformer(hidden, guidance_embeds=False)  # klein is step-distilled: no guidance embedding
    return Flux2KleinPipeline(scheduler=_scheduler(), vae=_flux2_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=True)


def _flux2_vae() -> AutoencoderKLFlux2:
    return AutoencoderKLFlux2(block_out_channels=(16, 16, 16, 16), layers_per_block=1, latent_channels=32,
                              norm_num_groups=8, mid_block_add_attention=False, use_quant_conv=False,
                              use_post_quant_conv=False)


def _flux2_transformer(text_width: int, guidance_embeds: bool) -> Flux2Transformer2DModel:
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=128,  # 32 latent channels patchified 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * text_width,  # three hidden-state layers side by side
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),  # sums to attention_head_dim
        guidance_embeds=guidance_embeds,
    )


FLUX2_TEXT_LAYERS = 30  # the pipeline reads hidden states 10, 20 and 30
# The user's text in Mistral's instruction markup. The system message the pipeline sends first is
# left out: the tiny tokenizer, a few hundred tokens wide, would spend a test's short
# max_sequence_length on it and cut the prompt off.
FLUX2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message.role == 'user' %}{% for part in message.content %}"
    "{% if part.type == 'text' %}[INST]{{ part.text }}[/INST]{% endif %}{% endfor %}{% endif %}{% endfor %}"
)


def build_tiny_flux2_pipeline() -> Flux2Pipeline:
    """FLUX.2 [dev]. Its tokenizer is a PixtralProcessor in the real weights, which transformers
    builds only where torchvision is installed; the pipeline calls nothing but its
    ``apply_chat_template``, which the bare tokenizer has too."""
    torch.manual_seed(BUILD_SEED)
    tokenizer = Qwen2Tokenizer().train_new_from_iterator([_training_text()], vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]})
    tokenizer.chat_template = FLUX2_CHAT_TEMPLATE
    hidden = 16
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config=MistralConfig(vocab_size=len(tokenizer) + 8, hidden_size=hidden, intermediate_size=32,
                                  num_hidden_layers=FLUX2_TEXT_LAYERS, num_attention_heads=2, num_key_value_heads=1,
                                  head_dim=8, max_position_embeddings=512),
        vision_config=PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, head_dim=8, image_size=64, patch_size=16),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
    ))
    return Flux2Pipeline(scheduler=_scheduler(), vae=_flux2_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                         transformer=_flux2_transformer(hidden, guidance_embeds=True))


def build_tiny_preview_decoder(latent_channels: int = 16) -> AutoencoderTiny:
    """A random AutoencoderTiny shaped like the public taef1 (FLUX.1 latents in, RGB out)."""
    torch.manual_seed(BUILD_SEED)
    return AutoencoderTiny(in_channels=3, out_channels=3, encoder_block_out_channels=(8, 8, 8, 8),
                           decoder_block_out_channels=(8, 8, 8, 8), num_encoder_blocks=(1, 1, 1, 1),
                           num_decoder_blocks=(1, 1, 1, 1), latent_channels=latent_channels,
                           scaling_factor=1.0, shift_factor=0.0)


def build_tiny_kontext_pipeline() -> FluxKontextPipeline:
    """FLUX.1 Kontext has FLUX.1's components; only the pipeline (and the trained weights) differ."""
    return FluxKontextPipeline.from_pipe(build_tiny_pipeline())


TINY_BUILDERS = {
    "flux1": build_tiny_pipeline,
    "kontext": build_tiny_kontext_pipeline,
    "klein": build_tiny_klein_pipeline,
    "flux2": build_tiny_flux2_pipeline,
    "preview-decoder": build_tiny_preview_decoder,
    "controlnet-upscaler": build_tiny_controlnet_upscaler,
    "fine-tuned-transformer": partial(build_tiny_transformer, seed=1),
}


def ensure_tiny_pipeline(folder: Path, family: str = "flux1") -> Path:
    """A tiny model's folder (``family``: a key of :data:`TINY_BUILDERS`), built there first if it
    is not yet."""
    if not any((folder / name).exists() for name in ("model_index.json", "config.json")):
        folder.mkdir(parents=True, exist_ok=True)
        huggingface_hub.utils.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        built: DiffusionPipeline | AutoencoderTiny = TINY_BUILDERS[family]()
        built.save_pretrained(folder)
    return folder
