"""The upscaler tool's engines: an input picture brought to a larger size, either redrawn there by
FLUX.1 [dev] steered by an upscaling ControlNet, or, where no such model is served (the demo
model), resampled there.

The ControlNet (jasperai/Flux.1-dev-Controlnet-Upscaler) reads the input picture resized to the
target size through the VAE, and the pipeline draws a sharp picture that follows it; the request's
``images[0]`` is that input, its width and height the target size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import transformers
from diffusers import DiffusionPipeline, FluxControlNetModel, FluxControlNetPipeline
from PIL import Image

from fluxhost.engines.base import (
    BatchStepCallback,
    ControlSettings,
    GenerationRequest,
    GenerationStopped,
    KindUnsupported,
    StartCallback,
)
from fluxhost.engines.families import Flux1, family_of
from fluxhost.engines.flux import FluxEngine, device_lock, loading, resolve_device, resolve_dtype
from fluxhost.engines.upscale import Upscaler
from fluxhost.settings import ModelSettings


def _input_image(request: GenerationRequest) -> Image.Image:
    if not request.images:
        raise ValueError("the upscaler needs an input image")
    return request.images[0].convert("RGB")


class ControlNetUpscaleEngine(FluxEngine):
    """A FLUX.1 pipeline with the model's ``controlnet``: everything else (memory and speed options,
    the device lock, step previews, stopping) is :class:`FluxEngine`'s."""

    @property
    def description(self) -> str:
        return f"{super().description}, upscaling with ControlNet {self.model.controlnet}"

    def _for_kind(self, pipeline: DiffusionPipeline) -> DiffusionPipeline:
        """The pipeline with the ControlNet, sharing the loaded components."""
        if not isinstance(family_of(pipeline), Flux1):
            raise KindUnsupported(f"a FLUX.1 ControlNet needs a FLUX.1 pipeline, not {type(pipeline).__name__} "
                                  f"from {self.weights!r}")
        with loading(self.model.controlnet):
            controlnet = FluxControlNetModel.from_pretrained(self.model.controlnet, dtype=self.dtype)
        # from_pipe casts every component to its dtype, float32 unless told.
        return FluxControlNetPipeline.from_pipe(pipeline, controlnet=controlnet, dtype=self.dtype)

    def _kinds(self, pipeline: DiffusionPipeline, redraw: DiffusionPipeline | None) -> frozenset[str]:
        return frozenset({"upscale"})

    def _warm_up_request(self, width: int, height: int) -> GenerationRequest:
        grey = Image.new("RGB", (width // 2, height // 2), "grey")
        return replace(super()._warm_up_request(width, height), images=(grey,))

    def _input_arguments(self, request: GenerationRequest, width: int, height: int) -> dict[str, object]:
        control = request.control or ControlSettings()
        return {
            "control_image": _input_image(request).resize((width, height), Image.Resampling.LANCZOS),
            "controlnet_conditioning_scale": control.conditioning_scale,
            "control_guidance_start": control.guidance_start,
            "control_guidance_end": control.guidance_end,
        }


class ResamplingUpscaleEngine:
    """The upscaler tool without a ControlNet: the input picture resampled to the asked size by the
    model's Swin2SR ``upscaler`` (Lanczos alone where it has none). Nothing is generated, so the
    prompt, seed, steps, guidance and control settings change nothing."""

    kinds = frozenset({"upscale"})

    def __init__(self, model: ModelSettings, *, device: str = "auto"):
        self.model = model
        self.device = resolve_device(model.device if model.device != "auto" else device)
        self.dtype = resolve_dtype(model.dtype, self.device)
        self.batches = 0
        self._upscaler: Upscaler | None = None
        self._lock = device_lock(self.device)

    @property
    def description(self) -> str:
        by = f"Swin2SR {self.model.upscaler}" if self.model.upscaler else "Lanczos"
        return (f"resampling by {by} ({self.device}, {str(self.dtype).removeprefix('torch.')}): the input picture "
                f"at the asked size; steps and the ControlNet settings do nothing here")

    def load(self) -> None:
        transformers.utils.logging.disable_progress_bar()
        with loading(self.model.upscaler or "Lanczos"):
            self._upscaler = Upscaler(self.model.upscaler, self.device, self.dtype)

    def generate_batch(self, requests: Sequence[GenerationRequest], on_start: StartCallback,
                       on_step: BatchStepCallback) -> list[list[Image.Image] | None]:
        upscaler = self._upscaler
        if upscaler is None:
            raise RuntimeError("engine used before load()")
        outputs: list[list[Image.Image] | None] = []
        with self._lock:
            on_start()
            for index, request in enumerate(requests):
                image = upscaler(_input_image(request), request.width, request.height)
                outputs.append([image] * request.num_images if on_step(index, 1, 1, None) else None)
            self.batches += 1
        if all(output is None for output in outputs):
            raise GenerationStopped
        return outputs
