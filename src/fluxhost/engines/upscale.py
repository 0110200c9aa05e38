"""Generating at a model's own small size and bringing the picture to the requested one: for
models trained at a small size (the demo model), whose pictures fall apart at a megapixel.

The upscale is a Swin2SR super-resolution model where one is configured (it redraws edges sharp
at its scale), then a Lanczos resize to the exact size; Lanczos alone otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageOps

SIDE_MULTIPLE = 16  # FLUX latents: 8 pixels per latent, 2x2 latents per token
SUPER_RESOLVE_MAX_PIXELS = 512 * 512
"""The largest picture Swin2SR redraws: it works at its own whole factor (the demo's: 8x), at about
3 KB of memory a pixel of its input (a 1600x1600 photo: 7 GB). A model's renders are far smaller;
a larger picture (a photo given to the upscaler tool) is resized by Lanczos alone."""


def render_size(width: int, height: int, pixels: int | None, min_side: int | None = None) -> tuple[int, int]:
    """The size to generate at for a ``width`` x ``height`` picture: about ``pixels`` pixels in the
    same shape, larger where that would make the shorter side less than ``min_side`` (sides
    multiples of 16), or the size itself when ``pixels`` is None."""
    if pixels is None:
        return width, height
    scale = max(math.sqrt(pixels / (width * height)), (min_side or 0) / min(width, height))
    return tuple(max(SIDE_MULTIPLE, round(side * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE) for side in (width, height))


class Upscaler:
    """Brings generated pictures to the requested size."""

    def __init__(self, weights: str | None, device: str, dtype: torch.dtype):
        self.model = None
        if weights:
            from transformers import Swin2SRForImageSuperResolution

            self.model = Swin2SRForImageSuperResolution.from_pretrained(weights, dtype=dtype).to(device).eval()

    def __call__(self, image: Image.Image, width: int, height: int) -> Image.Image:
        if image.size == (width, height):
            return image
        if (self.model is not None and (image.width < width or image.height < height)
                and image.width * image.height <= SUPER_RESOLVE_MAX_PIXELS):
            image = self._super_resolve(image)
        # Cropped to the requested shape first: the generated size is only close to it.
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)

    def _super_resolve(self, image: Image.Image) -> Image.Image:
        model = self.model
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None]
        with torch.inference_mode():
            output = model(pixel_values=(pixels / 255).to(model.device, model.dtype)).reconstruction
        array = (output[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array)
