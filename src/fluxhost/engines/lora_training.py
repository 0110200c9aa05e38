"""LoRA training on a loaded FLUX.1 pipeline, as diffusers' DreamBooth-LoRA FLUX script and
ai-toolkit train: a PEFT adapter on the transformer's attention and feed-forward layers, learnt by
flow matching on the pictures' VAE latents, the text encoders frozen and their encodings computed
once.

Each step draws its batch, caption dropout, timesteps and noise from ``(seed, step)`` alone, and
its learning rate (a short warm-up, then a cosine decay to zero) from the step: a run resumed from
a checkpoint goes on exactly as it would have. Noise levels are logit-normal (SD3's and FLUX's
training distribution), shifted by the picture's size as the pipeline's scheduler shifts them when
it draws; where the model was trained to start from positioned noise (the demo model) its noise is
positioned the same way, and where its VAE encoder cannot be trusted with new pictures (the demo
model's) a :class:`~fluxhost.engines.training.PictureReader` gives the latents and the tokens'
weights instead. Sample pictures are drawn through the engine's own ``generate``, with the adapter
loaded from its checkpoint file as any LoRA Run loads one.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL.Image import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fluxhost.engines.base import Adapter, GenerationRequest
from fluxhost.engines.families import Encoding
from fluxhost.engines.noise import position_ramps
from fluxhost.engines.training import (
    Checkpoint,
    PictureReader,
    TrainingExample,
    TrainingPlan,
    TrainingProgress,
    TrainingStopped,
    learning_rate_scale,
)

ADAPTER_NAME = "fluxhost_training"
TARGET_MODULES = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
)
"""The layers adapted: every attention projection of both block kinds and the feed-forward layers
(diffusers' FLUX LoRA script's choice, plus the single blocks' MLP input)."""
SIDE_MULTIPLE = 16  # a transformer token is 2x2 latents of 8x8 pixels
SAMPLE_SEED = 42
MAX_GRADIENT_NORM = 1.0  # gradients are clipped to this norm (diffusers' and ai-toolkit's default)


def training_side(resolution: int) -> int:
    return max(SIDE_MULTIPLE, resolution // SIDE_MULTIPLE * SIDE_MULTIPLE)


def square(image: Image, side: int) -> Image:
    """The picture's centred square, at ``side`` pixels."""
    width, height = image.size
    edge = min(width, height)
    left, top = (width - edge) // 2, (height - edge) // 2
    return image.convert("RGB").crop((left, top, left + edge, top + edge)).resize((side, side), resample=3)


@dataclass(frozen=True)
class Examples:
    """The training set as the steps read it."""

    latents: torch.Tensor  # (count, channels, rows, columns), scaled as the transformer reads them
    token_weights: torch.Tensor  # (count, tokens)
    captions: list[str]
    encodings: dict[str, Encoding]  # of every caption and of ""


class LoraTraining:
    """One training run on ``pipeline`` (a FLUX.1 pipeline, loaded by an engine whose ``generate``
    draws the samples). The pipeline is as it was once :meth:`run` returns or raises."""

    def __init__(self, pipeline: DiffusionPipeline, encode: Callable[[str], Encoding],
                 sample: Callable[[GenerationRequest], list[Image]], forget: Callable[[str], None],
                 positioned_noise: bool, sample_steps: int, sample_guidance: float,
                 pictures: PictureReader | None = None):
        """``encode``: a prompt's encoding (cached by the engine); ``sample``: draws a request with
        the engine; ``forget``: unloads an adapter ``sample`` loaded (by digest); ``pictures``:
        reads the pictures' latents in place of the VAE's encoder."""
        self.pipeline = pipeline
        self.encode = encode
        self.sample = sample
        self.forget = forget
        self.positioned_noise = positioned_noise
        self.sample_steps = sample_steps
        self.sample_guidance = sample_guidance
        self.pictures = pictures
        self.transformer = pipeline.transformer
        self.device = pipeline._execution_device
        self.dtype = self.transformer.dtype

    def run(self, plan: TrainingPlan, examples: list[TrainingExample], resume: Checkpoint | None,
            progress: TrainingProgress) -> Checkpoint:
        side = training_side(plan.resolution)
        latents, weights = self._latents([example.image for example in examples], side)
        captions = [example.caption for example in examples]
        with torch.no_grad():  # clones: the engine's cached encodings were made in inference mode
            encodings = {caption: {key: value.clone() for key, value in self.encode(caption).items()}
                         for caption in {*captions, ""}}
        self.transformer.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # the adapter's first weights from the seed
            torch.manual_seed(plan.seed)
            self.transformer.add_adapter(LoraConfig(r=plan.rank, lora_alpha=plan.rank, init_lora_weights="gaussian",
                                                    target_modules=list(TARGET_MODULES)), adapter_name=ADAPTER_NAME)
        try:
            return self._train(plan, Examples(latents, weights, captions, encodings), side, resume, progress)
        finally:
            if plan.gradient_checkpointing:
                self.transformer.disable_gradient_checkpointing()
            self.transformer.delete_adapters(ADAPTER_NAME)
            self.transformer.requires_grad_(False)

    def _train(self, plan: TrainingPlan, examples: Examples, side: int, resume: Checkpoint | None,
               progress: TrainingProgress) -> Checkpoint:
        self.transformer.set_adapter(ADAPTER_NAME)
        trained = [parameter for parameter in self.transformer.parameters() if parameter.requires_grad]
        for parameter in trained:  # trained in float32 whatever the model's dtype
            parameter.data = parameter.data.float()
        optimizer = self._optimizer(plan, trained)
        step = self._restore(resume, optimizer) if resume is not None else 0
        if plan.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train()
        last = None
        while step < plan.steps:
            for group in optimizer.param_groups:
                group["lr"] = plan.learning_rate * learning_rate_scale(step, plan.steps)
            loss = 0.0
            for part in range(plan.gradient_accumulation):
                batch_loss = self._loss(plan, examples, step, part)
                (batch_loss / plan.gradient_accumulation).backward()
                loss += batch_loss.item() / plan.gradient_accumulation
            torch.nn.utils.clip_grad_norm_(trained, MAX_GRADIENT_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            go_on = progress.step(step, plan.steps, loss)
            at_end = step == plan.steps
            saving = not go_on or at_end or (plan.save_every > 0 and step % plan.save_every == 0)
            sampling = go_on and bool(plan.sample_prompts) and (
                at_end or (plan.sample_every > 0 and step % plan.sample_every == 0))
            if saving:
                last = self._checkpoint(step, optimizer)
                progress.checkpoint(last)
            if not go_on:
                raise TrainingStopped(last)
            if sampling:
                progress.samples(step, self._samples(plan, self._adapter_bytes(), side))
        if last is None:  # resumed from the last step: nothing left to train
            last = self._checkpoint(step, optimizer)
            progress.checkpoint(last)
        return last

    def _latents(self, images: list[Image], side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each picture's latents, (count, channels, side/8, side/8), scaled as the transformer reads
        them; and each token's weight in the loss, (count, tokens)."""
        vae = self.pipeline.vae
        processor = self.pipeline.image_processor
        squares = [square(image, side) for image in images]
        with torch.no_grad():
            if self.pictures is not None:
                read = [self.pictures.read(picture) for picture in squares]
                raw = torch.stack([latents for latents, _ in read])
                weights = torch.stack([token_weights for _, token_weights in read])
            else:
                raw = torch.cat([vae.encode(processor.preprocess(picture, height=side, width=side).to(
                    self.device, vae.dtype)).latent_dist.mode() for picture in squares])
                weights = torch.ones(len(squares), (side // SIDE_MULTIPLE) ** 2)
        return ((raw.float() - vae.config.shift_factor) * vae.config.scaling_factor), weights

    def _loss(self, plan: TrainingPlan, examples: Examples, step: int, part: int) -> torch.Tensor:
        """The flow-matching loss of micro-batch ``part`` of step ``step`` (0-based)."""
        draw = torch.Generator().manual_seed(plan.seed * 1_000_003 + step * 64 + part)
        count = min(plan.batch_size, len(examples.captions))
        chosen = torch.randperm(len(examples.captions), generator=draw)[:count].tolist()
        dropped = (torch.rand(count, generator=draw) < plan.caption_dropout).tolist()
        texts = ["" if drop else examples.captions[index] for index, drop in zip(chosen, dropped, strict=True)]
        encodings = examples.encodings
        clean = examples.latents[chosen]
        _count, channels, rows, columns = clean.shape
        noise = torch.randn(clean.shape, generator=draw)
        if self.positioned_noise:
            noise = noise + position_ramps(count, channels, rows, columns)
        sigmas = self._shifted(torch.sigmoid(torch.randn(count, generator=draw)), rows * columns // 4)
        sigmas = sigmas.view(count, 1, 1, 1)
        noisy = (1 - sigmas) * clean + sigmas * noise
        target = noise - clean
        prompt_embeds = torch.cat([encodings[text]["prompt_embeds"] for text in texts]).to(self.device, self.dtype)
        pooled = torch.cat([encodings[text]["pooled_prompt_embeds"] for text in texts]).to(self.device, self.dtype)
        packed = self.pipeline._pack_latents(noisy, count, channels, rows, columns).to(self.device, self.dtype)
        image_ids = self.pipeline._prepare_latent_image_ids(count, rows // 2, columns // 2, self.device, self.dtype)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = (torch.full((count,), plan.guidance, device=self.device, dtype=torch.float32)
                    if self.transformer.config.guidance_embeds else None)
        predicted = self.transformer(
            hidden_states=packed, timestep=sigmas.view(count).to(self.device, self.dtype), guidance=guidance,
            pooled_projections=pooled, encoder_hidden_states=prompt_embeds, txt_ids=text_ids, img_ids=image_ids,
            return_dict=False,
        )[0]
        wanted = self.pipeline._pack_latents(target, count, channels, rows, columns).to(self.device)
        weights = examples.token_weights[chosen].to(self.device)[:, :, None]
        return ((predicted.float() - wanted.float()).square() * weights).mean()

    def _shifted(self, sigmas: torch.Tensor, tokens: int) -> torch.Tensor:
        """Noise levels moved as the pipeline's scheduler moves those it draws a picture of
        ``tokens`` tokens with, so that training weighs the levels drawing visits."""
        scheduler = self.pipeline.scheduler
        config = scheduler.config
        if config.get("use_dynamic_shifting"):
            mu = calculate_shift(tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                                 config.max_shift)
            return scheduler.time_shift(mu, 1.0, sigmas)
        return config.shift * sigmas / (1 + (config.shift - 1) * sigmas)

    @staticmethod
    def _optimizer(plan: TrainingPlan, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        if plan.optimizer == "adamw8bit" and torch.cuda.is_available():
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(parameters, lr=plan.learning_rate, weight_decay=1e-4)
        if plan.optimizer == "adafactor":
            from transformers.optimization import Adafactor

            return Adafactor(parameters, lr=plan.learning_rate, relative_step=False, scale_parameter=False,
                             warmup_init=False)
        return torch.optim.AdamW(parameters, lr=plan.learning_rate, weight_decay=1e-4)

    def _adapter_bytes(self) -> bytes:
        """The adapter as a diffusers LoRA file: PEFT's own key names under ``transformer.``."""
        weights = get_peft_model_state_dict(self.transformer, adapter_name=ADAPTER_NAME)
        return save_safetensors({f"transformer.{key}": value.detach().to("cpu", torch.float32).contiguous()
                                 for key, value in weights.items()}, metadata={"format": "pt"})

    def _checkpoint(self, step: int, optimizer: torch.optim.Optimizer) -> Checkpoint:
        state = io.BytesIO()
        torch.save({"step": step, "optimizer": optimizer.state_dict()}, state)
        return Checkpoint(step, self._adapter_bytes(), state.getvalue())

    def _restore(self, checkpoint: Checkpoint, optimizer: torch.optim.Optimizer) -> int:
        stored = load_safetensors(checkpoint.adapter)
        weights = {key.removeprefix("transformer."): value for key, value in stored.items()}
        outcome = set_peft_model_state_dict(self.transformer, weights, adapter_name=ADAPTER_NAME)
        if getattr(outcome, "unexpected_keys", None):
            raise ValueError("the checkpoint is not of this training (its rank or layers differ)")
        state = torch.load(io.BytesIO(checkpoint.state), map_location=self.device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        for parameter in (p for p in self.transformer.parameters() if p.requires_grad):
            parameter.data = parameter.data.float()
        return int(state["step"])

    def _samples(self, plan: TrainingPlan, adapter_file: bytes, side: int) -> list[Image]:
        """The sample prompts drawn with the adapter as it stands (``adapter_file``), loaded from
        its file the way a LoRA Run loads one; then back to training."""
        self.transformer.eval()
        try:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "sample.safetensors"
                path.write_bytes(adapter_file)
                adapter = Adapter(str(path), hashlib.sha256(adapter_file).hexdigest())
                try:
                    return [image for prompt in plan.sample_prompts for image in self.sample(GenerationRequest(
                        prompt, side, side, SAMPLE_SEED, self.sample_steps, self.sample_guidance,
                        adapters=(adapter,)))]
                finally:
                    self.forget(adapter.digest)
        finally:
            self.transformer.set_adapter(ADAPTER_NAME)
            self.transformer.train()
