"""Builds a tiny FLUX pipeline with random weights from configs alone (no download).

The folder it writes is an ordinary diffusers ``FluxPipeline`` (FLUX shapes: 16 latent channels,
4 VAE levels so a scale factor of 8, 2x2 packed patches), so the engine loads it with
``from_pretrained`` exactly as it loads real weights. It draws noise: it exists so that tests and
the offline demo run the real code path on a CPU in about a second per image.
"""

from __future__ import annotations

import string
from pathlib import Path

import huggingface_hub
import torch
import transformers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

from fluxhost.inputs import DEFAULT_PROMPT

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
    transformer = FluxTransformer2DModel(
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
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 16, 16),  # 4 levels: scale factor 8
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def ensure_tiny_pipeline(folder: Path) -> Path:
    """The tiny pipeline's folder, built there first if it is not yet."""
    if not (folder / "model_index.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        huggingface_hub.utils.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        build_tiny_pipeline().save_pretrained(folder)
    return folder
