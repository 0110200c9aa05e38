"""What a picture in the demo model's flat style shows, read with numpy alone: its background, the
objects standing on it (their colour, and how much of each pixel they cover), and the layout a
caption's things have in it. :mod:`fluxhost.demo.pictures` turns such readings into layout latents;
the decoder's last training (:func:`fluxhost.demo.train.fit_decoder_to_drawings`) reads the
transformer's own drawings with :func:`fitted_layout`."""

from __future__ import annotations

import numpy as np

from fluxhost.demo import scenes
from fluxhost.demo.regions import FAR_FROM_BACKGROUND, components

AREA_PER_RADIUS2 = {"circle": np.pi, "square": 1.8 ** 2, "triangle": 2.0}
"""Each demo shape's area over its radius squared (a square's half-side is 0.9 radius)."""
SPECK = 0.002
"""A region far from the background covering less than this share of the picture is a speck, not a thing."""
PALETTE = np.array(list(scenes.COLOURS.values()), dtype=np.float64)


def background_colour(pixels: np.ndarray) -> np.ndarray:
    """The picture's background colour (RGB 0-255): the median of its border."""
    return np.median(np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]]), 0)


def far_from(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Where the picture is far from its ``background`` colour: an object, or its rim."""
    return np.sqrt(((pixels - background) ** 2).sum(-1)) > FAR_FROM_BACKGROUND


def object_coverage(pixels: np.ndarray, background: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The colour (RGB 0-255) of the object that is ``region``, and how much of each pixel it covers."""
    colour = np.median(pixels[region], 0)
    direction = colour - background
    coverage = ((pixels - background) @ direction / (direction @ direction)).clip(0, 1)
    rim = region.copy()  # the object's antialiased rim counts, specks elsewhere do not
    rim[1:] |= region[:-1]
    rim[:-1] |= region[1:]
    rim[:, 1:] |= region[:, :-1]
    rim[:, :-1] |= region[:, 1:]
    return colour, np.where(rim, coverage, 0.0)


def nearest_colours(pixels: np.ndarray) -> np.ndarray:
    """Each pixel's nearest demo colour, as its index in :data:`fluxhost.demo.scenes.COLOURS`."""
    return ((pixels[..., None, :] - PALETTE) ** 2).sum(-1).argmin(-1)


def colour_name(rgb: np.ndarray) -> str:
    """The demo colour nearest to ``rgb`` (0-255)."""
    return list(scenes.COLOURS)[int(nearest_colours(rgb[None])[0])]


def fitted_layout(pixels: np.ndarray, caption: scenes.Caption) -> list[scenes.Drawn] | None:
    """``caption``'s things where the picture (RGB 0-255) drew them, each as the caption names it:
    the region of its colour nearest its place, at that region's centre, sized so that the
    caption's shape covers the region's area. None when the background or a thing is missing."""
    height, width = pixels.shape[:2]
    background = background_colour(pixels)
    if colour_name(background) != caption.background:
        return None
    far, nearest = far_from(pixels, background), nearest_colours(pixels)
    y, x = np.mgrid[0:height, 0:width] + 0.5
    taken = np.zeros((height, width), dtype=bool)
    layout = []
    for thing in caption.things:
        labels, count = components(far & (nearest == list(scenes.COLOURS).index(thing.colour)) & ~taken)
        place_x, place_y = scenes.PLACES[thing.place]
        regions = [labels == index for index in range(1, count + 1)]
        regions = [region for region in regions if region.sum() >= SPECK * far.size]
        if not regions:
            return None
        region = min(regions, key=lambda found: (x[found].mean() / width - place_x) ** 2
                     + (y[found].mean() / height - place_y) ** 2)
        taken |= region
        _colour, coverage = object_coverage(pixels, background, region)
        radius = float(np.sqrt(coverage.sum() / AREA_PER_RADIUS2[thing.shape]))
        centre_x, centre_y = (float((coverage * axis).sum() / coverage.sum()) for axis in (x, y))
        if thing.shape == "triangle":
            centre_y -= radius / 3  # its centroid is low: its centre is its box's
        layout.append(scenes.Drawn(thing, centre_x / width, centre_y / height, radius / min(width, height)))
    return layout
