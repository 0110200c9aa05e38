"""Trains the demo model from scratch, on this CPU, from a fixed seed: ``fluxhost models
train-demo`` (or ``python -m fluxhost.demo.train FOLDER``).

The parts are trained in turn, each on scenes drawn on the fly by :mod:`fluxhost.demo.scenes`
(held-out captions never among them):

1. the autoencoder (diffusers ``AutoencoderKL``, FLUX's shape: 16 latent channels, 8 pixels per
   latent): its decoder learns to draw each scene from latents computed from the scene's layout
   (:func:`layout_latents`), its encoder to give them;
2. the FLUX transformer with both text encoders (CLIP for the pooled vector, T5 for the
   sequence), by flow matching on those latents, as FLUX was;
3. the decoder again, on a loss that keeps edges steep (:func:`sharpen_decoder`);
4. the upscaler (transformers' ``Swin2SR``, 8x), from the autoencoder's reconstructions to the
   scene drawn eight times larger: it is what keeps edges clean at a megapixel;
5. the decoder a last time, on the transformer's own drawings (:func:`fit_decoder_to_drawings`);
6. the editing transformer (FLUX.1 Kontext's way), from the drawing one, on pairs of scenes
   before and after an instruction (:mod:`fluxhost.demo.edits`); ``editor_steps=0`` leaves it out;
7. the drawing transformer a last time, at the sizes the service draws at
   (:func:`train_at_served_sizes`).

The folder it writes is an ordinary diffusers ``FluxPipeline`` folder (plus ``upscaler/`` and
``editor/``), loaded by the same code as real FLUX weights.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from PIL import Image
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    Swin2SRConfig,
    Swin2SRForImageSuperResolution,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from fluxhost.demo import GUIDANCE, MAX_SEQUENCE_LENGTH, RENDER_MIN_SIDE, RENDER_PIXELS, STEPS, edits, scenes
from fluxhost.demo.reading import fitted_layout
from fluxhost.engines.noise import position_ramps
from fluxhost.engines.upscale import render_size
from fluxhost.orders import ASPECT_RATIOS, size_for_aspect_ratio

TEXT_WIDTH = 64
LATENT_CHANNELS = 16
UPSCALE = 8
TOKEN_PIXELS = 16  # a transformer token: 2x2 latents of 8x8 pixels


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    decoder_steps: int = 2200
    decoder_crop: int = 64  # side of a decoder training window, in pixels
    encoder_steps: int = 100
    autoencoder_batch: int = 12
    autoencoder_lr: float = 3e-3
    sharpen_steps: int = 600
    sharpen_lr: float = 2e-3
    sharpen_edge_weight: float = 30.0  # its pixels within two of an edge, over the background's
    sharpen_step_weight: float = 5.0  # its steps from pixel to pixel, beside its pixels
    denoiser_steps: int = 3400
    denoiser_batch: int = 32
    denoiser_lr: float = 1.5e-3
    shape_weight: float = 5.0
    caption_dropout: float = 0.1
    upscaler_steps: int = 300
    upscaler_batch: int = 16
    upscaler_crop: int = 24  # low-resolution side of an upscaler training crop
    upscaler_lr: float = 2e-3
    upscaler_edge_weight: float = 10.0  # its pixels within eight of an edge (one drawn pixel)
    fit_pool: int = 512  # the transformer's drawings the decoder's last training reads (in batches of FIT_BATCH)
    fit_steps: int = 1000
    fit_share: float = 0.85  # of its steps on those drawings; the others on exact layout latents
    fit_lr: float = 1e-3
    served_steps: int = 400  # the drawing transformer's last training, at the sizes it is served at
    served_lr: float = 3e-4
    editor_steps: int = 2400
    editor_batch: int = 16
    editor_lr: float = 1e-3
    keep_instruction: float = 0.1  # pairs with an empty instruction and no change: what guidance steers from


COMMON_RATIOS = ("1:1", "16:9")  # the transformers learn at these six times as often as at the others


def _size_for(ratio: str, min_side: int | None) -> tuple[int, int]:
    return render_size(*size_for_aspect_ratio(ratio), RENDER_PIXELS, min_side)


def draw_sizes(min_side: int | None = None) -> list[tuple[int, int]]:
    """The sizes the model learns at: about 128x128 pixels in each aspect ratio of the tool (some
    shared); with ``min_side``, the shorter side at least that, as the service draws them
    (``RENDER_MIN_SIDE``: wide and tall pictures a little larger)."""
    return sorted({_size_for(ratio, min_side) for ratio in ASPECT_RATIOS})


def _size_weights(min_side: int | None = None) -> list[int]:
    """How often the transformers learn at each of :func:`draw_sizes` (``min_side`` as there):
    :data:`COMMON_RATIOS` six times as often as the others."""
    common = {_size_for(ratio, min_side) for ratio in COMMON_RATIOS}
    return [6 if size in common else 1 for size in draw_sizes(min_side)]


def _pixels(images: list[Image.Image]) -> torch.Tensor:
    """RGB pictures as a (batch, 3, height, width) tensor in [-1, 1]."""
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 127.5 - 1


@dataclass(frozen=True)
class SceneBatch:
    """Scenes of one size. Their pictures, masks and latents are drawn when first read: each stage
    reads only some of them (the transformers never the pictures)."""

    captions: list[scenes.Caption]
    layouts: list[list[scenes.Drawn]]
    width: int
    height: int

    @functools.cached_property
    def pixels(self) -> torch.Tensor:
        """(batch, 3, height, width) in [-1, 1]."""
        return _pixels([scenes.render(caption, layout, self.width, self.height)
                        for caption, layout in zip(self.captions, self.layouts, strict=True)])

    @functools.cached_property
    def masks(self) -> torch.Tensor:
        """(batch, shapes, height, width): how much of each pixel each shape covers."""
        return torch.from_numpy(np.stack([scenes.shape_masks(layout, self.width, self.height)
                                          for layout in self.layouts]))

    @property
    def backgrounds(self) -> torch.Tensor:
        """(batch, 3): each scene's background colour, in [-1, 1] like its pixels."""
        return torch.from_numpy(_colours([caption.background for caption in self.captions]))

    @functools.cached_property
    def latents(self) -> torch.Tensor:
        return layout_latents(self.layouts, self.captions, self.width, self.height)


def _scenes(rng: random.Random, count: int, width: int, height: int, two_things: float = 0.4) -> SceneBatch:
    captions = [scenes.training_caption(rng, two_things) for _ in range(count)]
    return SceneBatch(captions, [scenes.lay_out(caption, rng) for caption in captions], width, height)


def _clip_tokenizer() -> CLIPTokenizer:
    """CLIP's byte-pair tokenizer with merges that build each caption word from its end (``d</w>``,
    ``ed</w>``, ``red</w>``): only a word's last token ever merges, so every caption word becomes
    one token, other words fall to letters, and the vocabulary is the same on every run."""
    letters = [character for character in string.printable if not character.isspace()]
    vocabulary = ["<|startoftext|>", "<|endoftext|>", *letters, *(letter + "</w>" for letter in letters)]
    merges = []
    for word in scenes.words():
        for start in range(len(word) - 2, -1, -1):
            merge = (word[start], word[start + 1 :] + "</w>")
            if merge not in merges:
                merges.append(merge)
                vocabulary.append("".join(merge))
    tokenizer = CLIPTokenizer(vocab={token: index for index, token in enumerate(vocabulary)},
                              merges=merges)
    tokenizer.model_max_length = 77
    return tokenizer


def build_tokenizers() -> tuple[CLIPTokenizer, T5TokenizerFast]:
    """Word-level in effect: every caption word is one token; any other text falls to characters."""
    clip = _clip_tokenizer()
    # T5's tokenizer is a unigram model: its pieces are given here (whole words likelier than letters).
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [("\u2581" + word, -1.0) for word in scenes.words()]
    pieces += [(character, -5.0) for character in string.printable if not character.isspace()]
    return clip, T5TokenizerFast(vocab=pieces, extra_ids=0)


def build_pipeline() -> FluxPipeline:
    clip_tokenizer, t5_tokenizer = build_tokenizers()
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=TEXT_WIDTH,
        bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=TEXT_WIDTH, d_kv=16, d_ff=2 * TEXT_WIDTH, num_layers=2, num_heads=4,
        relative_attention_num_buckets=16, dropout_rate=0.0, pad_token_id=t5_tokenizer.pad_token_id,
        eos_token_id=t5_tokenizer.eos_token_id, decoder_start_token_id=t5_tokenizer.pad_token_id))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=4, num_single_layers=2, attention_head_dim=32,
        num_attention_heads=4, joint_attention_dim=TEXT_WIDTH, pooled_projection_dim=TEXT_WIDTH,
        guidance_embeds=False, axes_dims_rope=(4, 14, 14))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
        latent_channels=LATENT_CHANNELS, norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer,
                        text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer)


def _optimiser(parameters, lr: float, steps: int):
    optimiser = torch.optim.AdamW(parameters, lr, weight_decay=0.0)
    return optimiser, torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps, pct_start=0.05)


def _update(loss: torch.Tensor, parameters, optimiser, schedule) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimiser.step()
    optimiser.zero_grad()
    schedule.step()


class Progress:
    def __init__(self, name: str, steps: int, report: Callable[[str], None]):
        self.name, self.steps, self.report = name, steps, report
        self.start, self.average = time.monotonic(), None

    def __call__(self, step: int, loss: float) -> None:
        self.average = loss if self.average is None else 0.95 * self.average + 0.05 * loss
        if step % 100 == 0 or step == self.steps - 1:
            self.report(f"{self.name}: step {step + 1}/{self.steps}, loss {self.average:.4f}, "
                        f"{time.monotonic() - self.start:.0f} s")


SDF_COPIES = 4  # the signed distance is what the decoder draws edges from: it weighs as much as the colours
CLAMP = 2.0  # distances are kept within this many latents (or radii) of an edge (or centre)


def layout_latents(layouts: list[list[scenes.Drawn]], captions: list[scenes.Caption], width: int,
                   height: int) -> torch.Tensor:
    """The latents the autoencoder is taught, computed from each scene's layout rather than learned,
    at each latent's centre (every 8 pixels): the background's colour (3 channels); the colour of
    the nearest shape (3), nearest by distance over radius; which shape it is (3, +1 or -1); the
    signed distance to the nearest shape's edge, in latents and clamped (``SDF_COPIES``
    channels); the offset from that shape's centre, in radii and clamped (2); and a zero.

    Every channel is smooth or flat, not a hard step, so the transformer can produce it; the
    decoder finds each edge where the signed distance crosses zero, and the shape named there tells
    it which corners to draw. A fixed target lets the transformer train without waiting for the
    autoencoder."""
    rows, columns = height // 8, width // 8
    y, x = np.meshgrid(np.arange(rows, dtype=np.float32) * 8 + 4, np.arange(columns, dtype=np.float32) * 8 + 4,
                       indexing="ij")
    latents = []
    for layout, caption in zip(layouts, captions, strict=True):
        fields = np.stack([_fields(item, x, y, width, height) for item in layout])
        nearest = fields[:, 0].argmin(0)
        chosen = np.take_along_axis(fields, nearest[None, None], 0)[0]
        things = [item.thing for item in layout]
        colours = _colours([thing.colour for thing in things])
        shapes = np.array([[1.0 if shape == thing.shape else -1.0 for shape in scenes.SHAPES] for thing in things],
                          dtype=np.float32)
        [background] = _colours([caption.background])
        latents.append(np.concatenate([
            np.broadcast_to(background[:, None, None], (3, rows, columns)),
            colours[nearest].transpose(2, 0, 1),
            shapes[nearest].transpose(2, 0, 1),
            np.broadcast_to(np.clip(chosen[1] / 8, -CLAMP, CLAMP), (SDF_COPIES, rows, columns)),
            np.clip(chosen[2:], -CLAMP, CLAMP),
            np.zeros((1, rows, columns), dtype=np.float32),
        ]))
    return torch.from_numpy(np.stack(latents))


def _colours(names: list[str]) -> np.ndarray:
    """(len(names), 3): the named colours, in [-1, 1] like pixels."""
    return np.array([scenes.COLOURS[name] for name in names], dtype=np.float32) / np.float32(127.5) - 1


def _fields(item: scenes.Drawn, x: np.ndarray, y: np.ndarray, width: int, height: int) -> np.ndarray:
    """At the points (``x``, ``y``) of a ``width`` x ``height`` scene: the squared distance from the
    thing's centre in radii, the signed distance to its edge in pixels, and the offset from its
    centre in radii, across and down."""
    cx, cy, radius = item.x * width, item.y * height, item.radius * min(width, height)
    across, down = (x - cx) / radius, (y - cy) / radius
    return np.stack([np.square(across) + np.square(down), signed_distance(item.thing.shape, x - cx, y - cy, radius),
                     across, down])


def signed_distance(shape: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Pixels from the edge of a shape centred at the origin (negative inside), as
    :func:`fluxhost.demo.scenes.render` draws it."""
    if shape == "circle":
        return _square_root(np.square(x) + np.square(y)) - radius
    if shape == "square":
        corners = [(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)]
    else:
        corners = [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
    points = [(a * radius, b * radius) for a, b in corners]
    edges, inside = [], np.ones(x.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(points, points[1:] + points[:1], strict=True):
        ex, ey = bx - ax, by - ay
        t = np.clip(((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey), 0, 1)
        edges.append(_square_root(np.square(x - ax - t * ex) + np.square(y - ay - t * ey)))
        inside &= ex * (y - ay) - ey * (x - ax) >= 0
    distance = np.min(edges, 0)
    return np.where(inside, -distance, distance)


def _square_root(values: np.ndarray) -> np.ndarray:
    """Torch's square root: the shipped weights learned from latents computed with it, and on float32
    it differs from NumPy's in the last bit of about one value in 140, enough for every trained
    part to come out different."""
    return torch.from_numpy(values).sqrt().numpy()


def _shapes(pixels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(batch, 1, height, width): 1 where a pixel (in [-1, 1]) is not the ``background`` colour
    (batch, 3) of its scene, that is on a shape or its antialiased rim."""
    return ((pixels - background[:, :, None, None]).abs().amax(1, keepdim=True) > 0.02).float()


def _weighted_error(output: torch.Tensor, pixels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """L1 plus squared error, the shapes weighted above the ``background`` colour (batch, 3) they
    stand on."""
    error = output - pixels
    return ((error.abs() + error.square()) * (1 + 9 * _shapes(pixels, background))).mean()


def _edge_band(shapes: torch.Tensor, reach: int) -> torch.Tensor:
    """1 within ``reach`` pixels of an edge of ``shapes`` (:func:`_shapes`), 0 elsewhere."""
    size = 2 * reach + 1
    return torch.nn.functional.max_pool2d(shapes, size, 1, reach) + torch.nn.functional.max_pool2d(
        -shapes, size, 1, reach)


def _sharpening_error(output: torch.Tensor, pixels: torch.Tensor, background: torch.Tensor,
                      recipe: Recipe) -> torch.Tensor:
    """L1, the pixels within two of an edge weighted ``recipe.sharpen_edge_weight`` times more and
    the shapes ten times more than the ``background`` colour (batch, 3) they stand on, plus the L1
    of each step from a pixel to the next: an edge as steep as drawn, where a squared error blurs it
    by the uncertainty of where it is."""
    shapes = _shapes(pixels, background)
    weight = 1 + 9 * shapes + recipe.sharpen_edge_weight * _edge_band(shapes, 2)
    steps = sum((output.diff(dim=axis) - pixels.diff(dim=axis)).abs().mean() for axis in (2, 3))
    return ((output - pixels).abs() * weight).mean() + recipe.sharpen_step_weight * steps


def _crops(latents: torch.Tensor, pixels: torch.Tensor, size: int,
           rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """A random window of ``size`` latents from each scene, and the pixels it covers: the decoder is
    convolutional, and small windows give it more scenes per second of training."""
    rows, columns = latents.shape[2:]
    windows = []
    for index in range(len(latents)):
        top, left = rng.randrange(rows - size + 1), rng.randrange(columns - size + 1)
        windows.append((latents[index, :, top : top + size, left : left + size],
                        pixels[index, :, top * 8 : (top + size) * 8, left * 8 : (left + size) * 8]))
    return torch.stack([latent for latent, _ in windows]), torch.stack([pixel for _, pixel in windows])


def _decoded_windows(vae: AutoencoderKL, recipe: Recipe, rng: random.Random
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of new scenes, a window of each (:func:`_crops`): what the decoder draws from the
    windows' layout latents, the pixels it should draw, and the scenes' background colours."""
    batch = _scenes(rng, recipe.autoencoder_batch, *rng.choice(draw_sizes()))
    latents, pixels = _crops(batch.latents, batch.pixels, recipe.decoder_crop // 8, rng)
    return vae.decode(latents).sample, pixels, batch.backgrounds


def train_autoencoder(vae: AutoencoderKL, recipe: Recipe, rng: random.Random,
                      report: Callable[[str], None]) -> None:
    """The decoder learns to draw scenes from their :func:`layout_latents` (on windows of them); the encoder learns to
    give those latents, its log-variance held far below zero (near-deterministic latents)."""
    sizes = draw_sizes()
    for part, steps in ((vae.decoder, recipe.decoder_steps), (vae.encoder, recipe.encoder_steps)):
        optimiser, schedule = _optimiser(part.parameters(), recipe.autoencoder_lr, steps)
        progress = Progress("decoder" if part is vae.decoder else "encoder", steps, report)
        vae.train()
        for step in range(steps):
            if part is vae.decoder:
                loss = _weighted_error(*_decoded_windows(vae, recipe, rng))
            else:
                batch = _scenes(rng, recipe.autoencoder_batch, *rng.choice(sizes))
                moments = vae.encoder(batch.pixels)
                mean, logvar = moments[:, :LATENT_CHANNELS], moments[:, LATENT_CHANNELS:]
                loss = (mean - batch.latents).square().mean() + 1e-3 * (logvar + 20).square().mean()
            _update(loss, part.parameters(), optimiser, schedule)
            progress(step, loss.item())
    vae.eval().requires_grad_(False)
    latents = _scenes(rng, 64, 128, 128).latents
    # FLUX's convention: the transformer sees (latents - shift) * scale, near zero mean and unit variance.
    vae.register_to_config(shift_factor=latents.mean().item(), scaling_factor=1 / latents.std().item())


def _sigmas(rng: torch.Generator, count: int, tokens: int) -> torch.Tensor:
    """Noise levels as FLUX trains them: logit-normal, shifted toward noise as the pipeline's
    scheduler shifts them for a picture of ``tokens`` tokens; centred higher than FLUX's, since
    where things go is decided at high noise and is the hard part here."""
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    t = torch.sigmoid(torch.randn(count, generator=rng) + 0.5)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def train_denoiser(pipeline: FluxPipeline, recipe: Recipe, rng: random.Random, generator: torch.Generator,
                   report: Callable[[str], None]) -> None:
    """Flow matching: from x_t = (1 - s) x_0 + s noise the transformer predicts noise - x_0, the
    velocity FLUX's scheduler steps along; the noise's mean marks each latent's place in the
    picture (:func:`~fluxhost.engines.noise.position_ramps`, served with ``noise_mean=positions``),
    so that "on the right" lands on the right at every aspect ratio. The text encoders learn with it. The tokens a shape
    touches weigh ``recipe.shape_weight`` times more (they are few, and they are the caption's
    hard part); a caption is left empty ``recipe.caption_dropout`` of the time, so that the model
    also learns the unconditional picture that classifier-free guidance steers away from."""
    modules = (pipeline.transformer, pipeline.text_encoder, pipeline.text_encoder_2)
    _learn_to_draw(pipeline, modules, "transformer", recipe.denoiser_steps, recipe.denoiser_lr, None, recipe, rng,
                   generator, report)


def train_at_served_sizes(pipeline: FluxPipeline, recipe: Recipe, report: Callable[[str], None]) -> None:
    """The drawing transformer's last training, as :func:`train_denoiser` but at the sizes the
    service draws at (:func:`draw_sizes` with ``RENDER_MIN_SIDE``), for ``recipe.served_steps``:
    it learned wide and tall pictures smaller than they are served (192x80 for 21:9, drawn at
    256x112), and at 21:9 it often drew no shape at all, or a speck. The text encoders stay as they
    are: the editor, trained before this, reads them. Last, with its own random streams
    (``recipe.seed + 5``), so that every other part is the same with or without it."""
    rng = random.Random(recipe.seed + 5)
    generator = torch.Generator().manual_seed(recipe.seed + 5)
    _learn_to_draw(pipeline, (pipeline.transformer,), "transformer at served sizes", recipe.served_steps,
                   recipe.served_lr, RENDER_MIN_SIDE, recipe, rng, generator, report)


def _learn_to_draw(pipeline: FluxPipeline, modules: tuple[torch.nn.Module, ...], name: str, steps: int, lr: float,
                   min_side: int | None, recipe: Recipe, rng: random.Random, generator: torch.Generator,
                   report: Callable[[str], None]) -> None:
    """``steps`` of :func:`train_denoiser`'s flow matching, ``modules`` learning, at :func:`draw_sizes`
    (``min_side`` as there)."""
    vae, transformer = pipeline.vae, pipeline.transformer
    parameters = [parameter for module in modules for parameter in module.parameters()]
    optimiser, schedule = _optimiser(parameters, lr, steps)
    progress = Progress(name, steps, report)
    sizes, weights = draw_sizes(min_side), _size_weights(min_side)
    for module in modules:
        module.train().requires_grad_(True)
    count = recipe.denoiser_batch
    for step in range(steps):
        width, height = rng.choices(sizes, weights)[0]
        batch = _scenes(rng, count, width, height, two_things=0.25)
        latents = (batch.latents - vae.config.shift_factor) * vae.config.scaling_factor
        rows, columns = latents.shape[2:]
        clean = FluxPipeline._pack_latents(latents, count, LATENT_CHANNELS, rows, columns)
        image_ids = FluxPipeline._prepare_latent_image_ids(count, rows // 2, columns // 2, "cpu", torch.float32)
        prompts = ["" if rng.random() < recipe.caption_dropout else str(caption) for caption in batch.captions]
        prompt_embeds, pooled, text_ids = pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, max_sequence_length=MAX_SEQUENCE_LENGTH)
        sigmas = _sigmas(generator, count, clean.shape[1])[:, None, None]
        ramps = position_ramps(count, LATENT_CHANNELS, rows, columns)
        noise = torch.randn(clean.shape, generator=generator) + FluxPipeline._pack_latents(
            ramps, count, LATENT_CHANNELS, rows, columns)
        velocity = transformer(hidden_states=(1 - sigmas) * clean + sigmas * noise, timestep=sigmas.flatten(),
                               pooled_projections=pooled, encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
                               img_ids=image_ids, return_dict=False)[0]
        touched = torch.nn.functional.max_pool2d(batch.masks.sum(1, keepdim=True), TOKEN_PIXELS).flatten(1) > 0
        token_weights = 1 + (recipe.shape_weight - 1) * touched.float()[:, :, None]
        loss = ((velocity - (noise - clean)).square() * token_weights).mean()
        _update(loss, parameters, optimiser, schedule)
        progress(step, loss.item())
    for module in modules:
        module.eval().requires_grad_(False)


def sharpen_decoder(vae: AutoencoderKL, recipe: Recipe, report: Callable[[str], None]) -> None:
    """The decoder's second training, on :func:`_sharpening_error`: its first (squared error and L1)
    finds each scene's colours and places fast but leaves edges about four pixels wide at 128;
    this narrows them (from the start, it learns far slower). Its own random stream
    (``recipe.seed + 2``) leaves every other part as it is with or without it."""
    rng = random.Random(recipe.seed + 2)
    _train_decoder_sharp(vae, "sharpening decoder", recipe.sharpen_steps, recipe.sharpen_lr,
                         lambda: _decoded_windows(vae, recipe, rng), recipe, report)


def _train_decoder_sharp(vae: AutoencoderKL, name: str, steps: int, lr: float,
                         windows: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]], recipe: Recipe,
                         report: Callable[[str], None]) -> None:
    """``steps`` of the decoder on :func:`_sharpening_error`, each on what ``windows()`` gives:
    what the decoder drew, the pixels it should have drawn, their scenes' background colours."""
    decoder = vae.decoder.train().requires_grad_(True)
    optimiser, schedule = _optimiser(decoder.parameters(), lr, steps)
    progress = Progress(name, steps, report)
    for step in range(steps):
        loss = _sharpening_error(*windows(), recipe)
        _update(loss, decoder.parameters(), optimiser, schedule)
        progress(step, loss.item())
    vae.eval().requires_grad_(False)


def build_upscaler() -> Swin2SRForImageSuperResolution:
    return Swin2SRForImageSuperResolution(Swin2SRConfig(
        image_size=64, num_channels=3, embed_dim=32, depths=[2], num_heads=[2], window_size=8, mlp_ratio=2.0,
        upscale=UPSCALE, upsampler="pixelshuffledirect", img_range=1.0, resi_connection="1conv"))


def train_upscaler(upscaler: Swin2SRForImageSuperResolution, vae: AutoencoderKL, recipe: Recipe,
                   report: Callable[[str], None]) -> None:
    """From a window of the autoencoder's reconstruction of a scene (what the pipeline hands over)
    to the same window of the scene drawn eight times larger, the pixels near an edge weighted
    more. Its own random streams (``recipe.seed + 3``, Swin2SR's stochastic depth included) make it
    the same from the same autoencoder."""
    rng = random.Random(recipe.seed + 3)
    torch.manual_seed(recipe.seed + 3)
    sizes = draw_sizes()
    crop = recipe.upscaler_crop
    optimiser, schedule = _optimiser(upscaler.parameters(), recipe.upscaler_lr, recipe.upscaler_steps)
    progress = Progress("upscaler", recipe.upscaler_steps, report)
    upscaler.train()
    for step in range(recipe.upscaler_steps):
        width, height = rng.choice(sizes)
        batch = _scenes(rng, recipe.upscaler_batch, width, height)
        with torch.no_grad():
            small = (vae.decode(batch.latents).sample.clamp(-1, 1) + 1) / 2
        low, high = [], []
        for index, (caption, layout) in enumerate(zip(batch.captions, batch.layouts, strict=True)):
            left, top = rng.randrange(width - crop + 1), rng.randrange(height - crop + 1)
            low.append(small[index, :, top : top + crop, left : left + crop])
            window = (left * UPSCALE, top * UPSCALE, crop * UPSCALE, crop * UPSCALE)
            high.append(scenes.render(caption, layout, width * UPSCALE, height * UPSCALE, window))
        target = _pixels(high)
        weight = 1 + recipe.upscaler_edge_weight * _edge_band(_shapes(target, batch.backgrounds), UPSCALE)
        error = upscaler(pixel_values=torch.stack(low)).reconstruction - (target + 1) / 2
        loss = (error.abs() * weight).mean()
        _update(loss, upscaler.parameters(), optimiser, schedule)
        progress(step, loss.item())
    upscaler.eval().requires_grad_(False)


FIT_BATCH = 16  # drawings made at once


def _drawings(pipeline: FluxPipeline, recipe: Recipe, rng: random.Random, generator: torch.Generator
              ) -> tuple[torch.Tensor, SceneBatch] | None:
    """Pictures the transformer draws of new captions at 128x128, as the service has it draw
    (from the position-marked noise, :data:`~fluxhost.demo.STEPS` steps of true guidance away from
    the empty caption): their latents, and each caption's scene laid out where the picture decoded
    from them has its things (:func:`~fluxhost.demo.reading.fitted_layout`). A picture that lost
    its background or a thing is left out; None when every one did (a transformer barely trained)."""
    vae = pipeline.vae
    side, rows = 128, 128 // 8
    kept_latents, captions, layouts = [], [], []
    for _ in range(recipe.fit_pool // FIT_BATCH):
        asked = [scenes.training_caption(rng) for _ in range(FIT_BATCH)]
        noise = torch.randn((FIT_BATCH, LATENT_CHANNELS, rows, rows), generator=generator) + position_ramps(
            FIT_BATCH, LATENT_CHANNELS, rows, rows)
        packed = pipeline(prompt=[str(caption) for caption in asked], negative_prompt=[""] * FIT_BATCH,
                          true_cfg_scale=GUIDANCE, num_inference_steps=STEPS, width=side, height=side,
                          latents=FluxPipeline._pack_latents(noise, FIT_BATCH, LATENT_CHANNELS, rows, rows),
                          max_sequence_length=MAX_SEQUENCE_LENGTH, output_type="latent").images
        latents = FluxPipeline._unpack_latents(packed, side, side, pipeline.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        with torch.no_grad():
            pixels = ((vae.decode(latents).sample.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
        for caption, drawn_latents, drawn_pixels in zip(asked, latents, pixels.astype(np.float64), strict=True):
            layout = fitted_layout(drawn_pixels, caption)
            if layout is not None:
                kept_latents.append(drawn_latents)
                captions.append(caption)
                layouts.append(layout)
    if not kept_latents:
        return None
    return torch.stack(kept_latents), SceneBatch(captions, layouts, side, side)


def fit_decoder_to_drawings(pipeline: FluxPipeline, recipe: Recipe, report: Callable[[str], None]) -> None:
    """The decoder's last training, on the latents it is served: the transformer's own drawings
    (:func:`_drawings`), each to its caption's scene where the drawing put its things, beside
    exact layout latents, on :func:`_sharpening_error`. The transformer's latents are not the
    layout latents the decoder learned from: their edges waver and their colours blend where two
    things meet, and the decoder drew that as it came, a fringe the colour of neither thing.
    After the upscaler, which learned from the decoder before this and draws its pictures as well;
    its own random streams (``recipe.seed + 4``) leave every other part as it is."""
    rng = random.Random(recipe.seed + 4)
    generator = torch.Generator().manual_seed(recipe.seed + 4)
    pipeline.set_progress_bar_config(disable=True)
    started = time.monotonic()
    drawings = _drawings(pipeline, recipe, rng, generator)
    report(f"decoder fitting: {0 if drawings is None else len(drawings[0])} of {recipe.fit_pool} drawings read, "
           f"{time.monotonic() - started:.0f} s")
    vae = pipeline.vae

    def windows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if drawings is None or rng.random() >= recipe.fit_share:
            return _decoded_windows(vae, recipe, rng)
        drawn_latents, drawn = drawings
        chosen = [rng.randrange(len(drawn_latents)) for _ in range(recipe.autoencoder_batch)]
        latents, pixels = _crops(drawn_latents[chosen], drawn.pixels[chosen], recipe.decoder_crop // 8, rng)
        return vae.decode(latents).sample, pixels, drawn.backgrounds[chosen]

    _train_decoder_sharp(vae, "decoder fitting", recipe.fit_steps, recipe.fit_lr, windows, recipe, report)


def _edit_batch(rng: random.Random, count: int, width: int, height: int,
                keep: float) -> tuple[list[str], SceneBatch, SceneBatch]:
    """Instructions and the scenes before and after them; ``keep`` of the time an empty instruction
    whose scene after is the scene before."""
    chosen = [edits.training_edit(rng) for _ in range(count)]
    pairs = [(edit, rng.random() < keep) for edit in chosen]
    instructions = ["" if same else edit.instruction for edit, same in pairs]
    before = SceneBatch([edit.caption_before for edit in chosen], [list(edit.before) for edit in chosen], width, height)
    after = SceneBatch([edit.caption_before if same else edit.caption_after for edit, same in pairs],
                   [list(edit.before if same else edit.after) for edit, same in pairs], width, height)
    return instructions, before, after


def train_editor(pipeline: FluxPipeline, recipe: Recipe, report: Callable[[str], None]) -> FluxTransformer2DModel:
    """The editing transformer, FLUX.1 Kontext's way: the picture to edit, as latents, is appended
    to the sequence being denoised with position ids ``(1, row, column)``, and the transformer
    learns to draw the scene after the instruction. Those latents are the scene's layout latents,
    as the demo's picture reader gives them for a picture served to it
    (:func:`fluxhost.demo.pictures.read_scene`), not the VAE encoder's: an editor can only keep
    what its reference carries, and the briefly trained encoder loses the shapes' colours and
    names. It starts from the drawing transformer (it already draws every scene the captions name)
    and reads the same text encoders, which stay as they are; the tokens a shape touches, before
    or after, weigh more. Its starting noise carries the reference's latents beside the position
    ramps (served with ``noise_mean=positions-and-reference``): every token reads what the picture
    to edit has in its place at every step, where through attention alone the editor learned to copy
    slowly (the rest of the scene kept in 0.28 of held-out edits after 800 steps, against 0.15 after
    1,200 without, both at guidance 2.0). Its own random streams (``recipe.seed + 1``) make it the
    same from the same drawing model."""
    rng = random.Random(recipe.seed + 1)
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    vae = pipeline.vae
    editor = copy.deepcopy(pipeline.transformer).train().requires_grad_(True)
    parameters = list(editor.parameters())
    optimiser, schedule = _optimiser(parameters, recipe.editor_lr, recipe.editor_steps)
    progress = Progress("editor", recipe.editor_steps, report)
    sizes, weights = draw_sizes(), _size_weights()
    count = recipe.editor_batch
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    for step in range(recipe.editor_steps):
        width, height = rng.choices(sizes, weights)[0]
        instructions, before, after = _edit_batch(rng, count, width, height, recipe.keep_instruction)
        rows, columns = height // 8, width // 8
        with torch.no_grad():
            prompt_embeds, pooled, text_ids = pipeline.encode_prompt(
                prompt=instructions, prompt_2=None, max_sequence_length=MAX_SEQUENCE_LENGTH)
        reference = FluxPipeline._pack_latents((before.latents - shift) * scale, count, LATENT_CHANNELS, rows, columns)
        clean = FluxPipeline._pack_latents((after.latents - shift) * scale, count, LATENT_CHANNELS, rows, columns)
        image_ids = FluxPipeline._prepare_latent_image_ids(count, rows // 2, columns // 2, "cpu", torch.float32)
        reference_ids = image_ids.clone()
        reference_ids[:, 0] = 1
        sigmas = _sigmas(generator, count, clean.shape[1])[:, None, None]
        ramps = position_ramps(count, LATENT_CHANNELS, rows, columns)
        noise = torch.randn(clean.shape, generator=generator) + FluxPipeline._pack_latents(
            ramps, count, LATENT_CHANNELS, rows, columns) + reference
        tokens = clean.shape[1]
        velocity = editor(hidden_states=torch.cat([(1 - sigmas) * clean + sigmas * noise, reference], 1),
                          timestep=sigmas.flatten(), pooled_projections=pooled, encoder_hidden_states=prompt_embeds,
                          txt_ids=text_ids, img_ids=torch.cat([image_ids, reference_ids]),
                          return_dict=False)[0][:, :tokens]
        shapes = torch.cat([before.masks, after.masks], 1).sum(1, keepdim=True)
        touched = torch.nn.functional.max_pool2d(shapes, TOKEN_PIXELS).flatten(1) > 0
        token_weights = 1 + (recipe.shape_weight - 1) * touched.float()[:, :, None]
        loss = ((velocity - (noise - clean)).square() * token_weights).mean()
        _update(loss, parameters, optimiser, schedule)
        progress(step, loss.item())
    return editor.eval().requires_grad_(False)


def train(folder: Path, recipe: Recipe = Recipe(), report: Callable[[str], None] = print) -> None:
    """Trains every part from ``recipe.seed`` and writes the pipeline (and its upscaler) to ``folder``."""
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    started = time.monotonic()
    pipeline = build_pipeline()
    upscaler = build_upscaler()
    train_autoencoder(pipeline.vae, recipe, rng, report)
    train_denoiser(pipeline, recipe, rng, generator, report)
    sharpen_decoder(pipeline.vae, recipe, report)
    train_upscaler(upscaler, pipeline.vae, recipe, report)
    fit_decoder_to_drawings(pipeline, recipe, report)
    editor = train_editor(pipeline, recipe, report) if recipe.editor_steps else None
    if recipe.served_steps:
        train_at_served_sizes(pipeline, recipe, report)
    folder.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(folder)
    upscaler.save_pretrained(folder / "upscaler")
    if editor is not None:
        editor.to(torch.float16).save_pretrained(folder / "editor")  # half the bytes; loaded back in float32
    report(f"trained in {(time.monotonic() - started) / 60:.1f} min; written to {folder}")


if __name__ == "__main__":
    steps = {name: int(value) for name, value in (argument.split("=") for argument in sys.argv[2:])}
    train(Path(sys.argv[1]), Recipe(**steps))
