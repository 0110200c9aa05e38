"""The diffusers FLUX engine: any diffusers text-to-image FLUX pipeline, local folder or hub id."""

from __future__ import annotations

import inspect
import logging
import threading

import torch
import transformers
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from PIL.Image import Image

from fluxhost.engines.base import GenerationRequest, GenerationStopped, StartCallback, StepCallback
from fluxhost.settings import ModelSettings

log = logging.getLogger(__name__)

PREVIEW_SCALE = 0.25
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """bfloat16 on accelerators; float32 on CPUs, where bfloat16 is far slower without AMX."""
    if dtype != "auto":
        return _DTYPES[dtype]
    return torch.float32 if device == "cpu" else torch.bfloat16


class FluxEngine:
    """Wraps one diffusers pipeline, loaded once. Generations on one pipeline are serialised:
    its scheduler keeps per-call state."""

    def __init__(self, weights: str, model: ModelSettings, *, label: str | None = None):
        self.weights = weights
        self.model = model
        self.device = resolve_device(model.device)
        self.dtype = resolve_dtype(model.dtype, self.device)
        self.description = f"{label or weights} on {self.device} ({str(self.dtype).removeprefix('torch.')})"
        self._pipeline: DiffusionPipeline | None = None
        self._takes_images = False
        self._lock = threading.Lock()

    def load(self) -> None:
        diffusers_logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        pipeline = DiffusionPipeline.from_pretrained(self.weights, dtype=self.dtype)
        if self.model.cpu_offload and self.device != "cpu":
            pipeline.enable_model_cpu_offload(device=self.device)
        else:
            pipeline.to(self.device)
        pipeline.set_progress_bar_config(disable=True)
        self._takes_images = "image" in inspect.signature(pipeline.__call__).parameters
        self._pipeline = pipeline

    def generate(self, request: GenerationRequest, on_start: StartCallback, on_step: StepCallback) -> list[Image]:
        if self._pipeline is None:
            raise RuntimeError("engine used before load()")
        if request.images and not self._takes_images:
            raise ValueError(f"{self.weights} takes no input images")
        stopped = False

        def step_end(pipeline, step: int, _timestep, tensors: dict) -> dict:
            nonlocal stopped
            latents = tensors["latents"]

            def preview() -> Image:
                return self._preview(latents, request.height, request.width)

            if not on_step(step + 1, pipeline.num_timesteps, preview):
                pipeline._interrupt = True  # diffusers' documented way: skip the remaining steps
                stopped = True
            return tensors

        # CPU generators give the same noise on every device, so a seed means one image.
        generators = [torch.Generator(device="cpu").manual_seed(request.seed + i) for i in range(request.num_images)]
        images = {"image": list(request.images)} if request.images else {}
        with self._lock, torch.inference_mode():
            on_start()
            result = self._pipeline(
                prompt=request.prompt,
                width=request.width,
                height=request.height,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance,
                num_images_per_prompt=request.num_images,
                generator=generators,
                max_sequence_length=self.model.max_sequence_length,
                callback_on_step_end=step_end,
                output_type="pil",
                **images,
            )
        if stopped:
            raise GenerationStopped
        return list(result.images)

    def _preview(self, packed_latents: torch.Tensor, height: int, width: int) -> Image:
        """The current latents decoded by the model's own VAE at a quarter of the size: about
        1/16 of a full decode's cost, and no extra weights to download."""
        pipeline = self._pipeline
        latents = pipeline._unpack_latents(packed_latents, height, width, pipeline.vae_scale_factor)
        latents = torch.nn.functional.interpolate(latents, scale_factor=PREVIEW_SCALE, mode="area")
        latents = latents / pipeline.vae.config.scaling_factor + pipeline.vae.config.shift_factor
        with torch.inference_mode():
            decoded = pipeline.vae.decode(latents.to(pipeline.vae.dtype), return_dict=False)[0]
        return pipeline.image_processor.postprocess(decoded, output_type="pil")[0]
