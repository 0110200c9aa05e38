"""Several input images as references of one FLUX.1 Kontext edit.

diffusers' FluxKontextPipeline reads a list of images as a batch (one reference per row) and
FLUX.1 Kontext was trained with a single reference, whose tokens follow the image being drawn in
the transformer's sequence with position ids ``(1, row, column)``. Three ways to give it more than
one were weighed:

- stitching the images side by side into one picture: works with any pipeline, but every image is
  squeezed into a shared canvas and its aspect ratio is decided by the others;
- one position index per reference (``(2, row, column)``, ``(3, ...)``): the FLUX.2 way, which
  Kontext was not trained for (ComfyUI offers it as "index" for models trained to use it);
- every reference encoded on its own and appended to the sequence, all at index 1 but each at its
  own row/column offset, so that together they tile one larger picture: ComfyUI's default
  ("offset", its ReferenceLatent nodes chained), which works with the released Kontext weights.

The last is what is done here: it is the stitched picture without the resampling, each reference
keeping its own size and aspect ratio (the one of Kontext's preferred resolutions closest to it).
It fits diffusers 0.42 without copying its denoising loop: the loop already appends whatever
``prepare_latents`` returns as reference latents and ids, so :class:`FluxKontextReferencesPipeline`
only adds the further references there. With one image nothing differs from FluxKontextPipeline.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline, FluxKontextPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL.Image import Image


def tile_offsets(grids: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (row, column) at which each reference grid of (rows, columns) tokens starts, in order:
    each goes below the area the earlier ones cover, or to its right where below would make that
    area taller than it is wide, so that the tiling stays close to square."""
    height = width = 0
    offsets = []
    for rows, columns in grids:
        offset = (0, width) if height + rows > width + columns else (height, 0)
        offsets.append(offset)
        height = max(height, offset[0] + rows)
        width = max(width, offset[1] + columns)
    return offsets


class FluxKontextReferencesPipeline(FluxKontextPipeline):
    """FluxKontextPipeline that takes a list of several images as the references of every image it
    draws (not as a batch). The images after the first are kept for the length of a call: the
    engine runs one call at a time on a pipeline."""

    _further_references: tuple[Image, ...] = ()
    _fit_to_kontext_sizes = True

    @functools.wraps(FluxKontextPipeline.__call__)
    def __call__(self, image=None, **arguments):
        if not (isinstance(image, list) and len(image) > 1):
            return super().__call__(image=image, **arguments)
        self._further_references = tuple(image[1:])
        self._fit_to_kontext_sizes = arguments.get("_auto_resize", True)
        try:
            return super().__call__(image=image[:1], **arguments)
        finally:
            self._further_references = ()

    def prepare_latents(self, image, batch_size, num_channels_latents, height, width, dtype, device,
                        generator=None, latents=None):
        latents, image_latents, latent_ids, image_ids = super().prepare_latents(
            image, batch_size, num_channels_latents, height, width, dtype, device, generator, latents)
        if image_latents is None or not self._further_references:
            return latents, image_latents, latent_ids, image_ids
        encoded = [self._encode_reference(reference, device, dtype) for reference in self._further_references]
        grids = [(int(image_ids[:, 1].max()) + 1, int(image_ids[:, 2].max()) + 1)]  # the first reference's
        grids += [(reference.shape[2] // 2, reference.shape[3] // 2) for reference in encoded]  # in 2x2 patches
        offsets = tile_offsets(grids)
        packed, ids = [image_latents], [image_ids]
        for reference, (rows, columns), (row, column) in zip(encoded, grids[1:], offsets[1:], strict=True):
            packed.append(self._pack_latents(reference, 1, num_channels_latents, 2 * rows, 2 * columns)
                          .expand(batch_size, -1, -1))
            # float32: past 256 bfloat16 rounds positions, and tiled ones get there (torch.cat promotes the rest).
            reference_ids = self._prepare_latent_image_ids(1, rows, columns, device, torch.float32)
            reference_ids[:, 0] = 1
            reference_ids[:, 1] += row
            reference_ids[:, 2] += column
            ids.append(reference_ids)
        return latents, torch.cat(packed, dim=1), latent_ids, torch.cat(ids, dim=0)

    def _encode_reference(self, reference: Image, device, dtype) -> torch.Tensor:
        """One reference's VAE latents (1, channels, rows, columns), sized as the pipeline sizes
        its first image: the closest of Kontext's preferred resolutions, in whole 2x2 patches."""
        width, height = reference.size
        if self._fit_to_kontext_sizes:
            _, width, height = min((abs(width / height - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        multiple = self.vae_scale_factor * 2
        width, height = width // multiple * multiple, height // multiple * multiple
        pixels = self.image_processor.preprocess(self.image_processor.resize(reference, height, width), height, width)
        return self._encode_vae_image(pixels.to(device=device, dtype=dtype), generator=None)


def taking_several_references(pipeline: DiffusionPipeline) -> DiffusionPipeline:
    """The pipeline itself, or for FluxKontextPipeline the same components in
    :class:`FluxKontextReferencesPipeline`."""
    if type(pipeline) is FluxKontextPipeline:
        return FluxKontextReferencesPipeline.from_pipe(pipeline)
    return pipeline
