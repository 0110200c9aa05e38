"""Tiny random-weight classifiers and language model, built from configs alone (no download), that
load through the same code as real ones: the moderation and upsampling paths run offline in tests,
benches and demos. Their answers are noise, like the tiny FLUX pipeline's pictures."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from fluxhost.testing.tiny import BUILD_SEED, KLEIN_CHAT_TEMPLATE, _training_text

LABELS = {0: "normal", 1: "nsfw"}


def _save_once(folder: Path, build) -> Path:
    if not (folder / "config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(BUILD_SEED)
        for part in build():
            part.save_pretrained(folder)
    return folder


def tiny_text_classifier(folder: Path) -> Path:
    """A BERT sequence classifier with the labels ``normal`` and ``nsfw``."""

    def build():
        tokenizer = BertTokenizerFast().train_new_from_iterator([_training_text() + list(string.ascii_letters)],
                                                                vocab_size=200)
        tokenizer.model_max_length = 128  # = max_position_embeddings: longer prompts are truncated
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=128, id2label=LABELS,
                            label2id={label: index for index, label in LABELS.items()})
        return tokenizer, BertForSequenceClassification(config)

    return _save_once(folder, build)


def tiny_image_classifier(folder: Path) -> Path:
    """A ViT image classifier (32x32 input) with the labels ``normal`` and ``nsfw``."""

    def build():
        config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, id2label=LABELS,
                           label2id={label: index for index, label in LABELS.items()})
        return ViTImageProcessor(size={"height": 32, "width": 32}), ViTForImageClassification(config)

    return _save_once(folder, build)


def tiny_language_model(folder: Path) -> Path:
    """A Qwen3 causal LM with a chat template."""

    def build():
        tokenizer = Qwen2Tokenizer().train_new_from_iterator([_training_text()], vocab_size=300)
        tokenizer.chat_template = KLEIN_CHAT_TEMPLATE
        config = Qwen3Config(vocab_size=len(tokenizer) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                             tie_word_embeddings=False)
        model = Qwen3ForCausalLM(config)
        # Random weights settle on one token; make it never a blank one, so the noise reads as text.
        blank = [index for token, index in tokenizer.get_vocab().items() if not tokenizer.decode([index]).strip()]
        with torch.no_grad():
            model.lm_head.weight[blank] = -10 * model.lm_head.weight.abs().max()
        return tokenizer, model

    return _save_once(folder, build)
