"""Pictures in the demo model's flat style read back into its layout latents: training pictures,
so that a LoRA training on the demo model learns from uploaded pictures, and pictures to edit, so
that the demo editing model sees the scene it is asked to change.

The demo's VAE encoder was trained briefly and on the demo's own scenes only: a shape it never saw
(a ring) comes out as the nearest one it knows (a filled disc), and even the demo's own scenes come
back from it with colours drifted and every shape a circle. Its decoder, though, draws whatever
outline the layout latents' signed distance gives, holes included. So the demo model reads a
picture's layout instead of encoding it, channel by channel as
:func:`fluxhost.demo.train.layout_latents` lays them out:

background  the median colour of the picture's border;
object      a connected region of pixels far from the background, with each pixel's coverage (an
            antialiased edge is part object, part background) read from where its colour lies
            between the two;
edge        where coverage crosses one half, to a fraction of a pixel: the signed distance;
shape code  that of the demo shape whose outline best overlaps the object with its holes filled;
            its centre and radius give the offsets, as the demo places a shape.

A training picture is one object (the largest region), its edge as measured: it may be a shape the
demo never drew. A picture to edit is a demo scene (:func:`read_scene`): up to two objects, each
named by the demo colour and shape nearest to it, its latents those the editor learned from.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL.Image import Image, Resampling

from fluxhost.demo import scenes
from fluxhost.demo.reading import (
    AREA_PER_RADIUS2,
    SPECK,
    background_colour,
    colour_name,
    far_from,
    nearest_colours,
    object_coverage,
)
from fluxhost.demo.regions import components, enclosed, largest_region
from fluxhost.demo.train import CLAMP, SDF_COPIES, TOKEN_PIXELS, Recipe, layout_latents, signed_distance

MOST_THINGS = 2  # a demo scene's
READ_SIDE = 256
"""A picture to edit is read at most this large (reduced by area averaging, which keeps its edges'
coverage): twice what the demo draws at, its objects' places and sizes to a fraction of the demo's
pixel."""


def _edge_points(coverage: np.ndarray) -> np.ndarray:
    """(n, 2): points (x, y; a pixel's centre at i + 0.5) where coverage crosses one half between
    neighbouring pixels, linearly interpolated."""
    points = []
    for transposed in (False, True):
        values = coverage.T if transposed else coverage
        before, after = values[:, :-1], values[:, 1:]
        rows, columns = np.nonzero((before - 0.5) * (after - 0.5) < 0)
        along = columns + 0.5 + (0.5 - before[rows, columns]) / (after[rows, columns] - before[rows, columns])
        across = rows + 0.5
        points.append(np.stack([across, along], 1) if transposed else np.stack([along, across], 1))
    return np.concatenate(points)


def _placed_shape(filled: np.ndarray, area: float) -> tuple[str, float, float, float]:
    """The demo shape, centre (x, y in pixels) and radius whose outline best overlaps ``filled``."""
    height, width = filled.shape
    ys, xs = np.nonzero(filled)
    y, x = np.mgrid[0:height, 0:width] + 0.5
    best: tuple[float, str, float, float, float] | None = None
    for shape in scenes.SHAPES:
        radius = float(np.sqrt(area / AREA_PER_RADIUS2[shape]))
        cx = float(xs.mean() + 0.5)
        cy = float(ys.mean() + 0.5) - (radius / 3 if shape == "triangle" else 0.0)  # a triangle's centroid is low
        outline = signed_distance(shape, x - cx, y - cy, radius) < 0
        overlap = (outline & filled).sum() / (outline | filled).sum()
        if best is None or overlap > best[0]:
            best = (overlap, shape, cx, cy, radius)
    assert best is not None
    return best[1:]


def read_scene(image: Image) -> tuple[scenes.Caption, list[scenes.Drawn]]:
    """The demo scene ``image`` shows: its background, and its two largest objects (or its one), each
    as the demo's colour, shape and place nearest to what it is, at its own centre and size.
    ValueError when it has none."""
    image = image.convert("RGB")
    if max(image.size) > READ_SIDE:
        scale = READ_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float64)
    height, width = pixels.shape[:2]
    background = background_colour(pixels)
    far, nearest = far_from(pixels, background), nearest_colours(pixels)
    regions = []  # two shapes may touch: a region is of one demo colour
    for colour in np.unique(nearest[far]):
        labels, count = components(far & (nearest == colour))
        areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        regions += [(int(area), labels == index + 1) for index, area in enumerate(areas) if area >= SPECK * far.size]
    largest = [region for _, region in sorted(regions, key=lambda found: -found[0])[:MOST_THINGS]]
    if not largest:
        raise ValueError("the demo model edits and redraws pictures of flat shapes on a plain background, and this "
                         "picture shows none (every part of it is near its border's colour): give it one, or "
                         "configure FLUX weights for other pictures")
    layout = []
    for region in largest:
        colour, coverage = object_coverage(pixels, background, region)
        shape, cx, cy, radius = _placed_shape(coverage > 0.5, coverage.sum())  # the demo's shapes have no holes
        x, y = cx / width, cy / height
        place = min(scenes.PLACES, key=lambda name: math.dist(scenes.PLACES[name], (x, y)))
        layout.append(scenes.Drawn(scenes.Thing(shape, colour_name(colour), place), x, y, radius / min(width, height)))
    return scenes.Caption(tuple(item.thing for item in layout), colour_name(background)), layout



class FlatPictures:
    """Reads pictures for the demo model (see the module's docstring), training pictures and pictures
    to edit: its engine's :class:`~fluxhost.engines.training.PictureReader`."""

    def read(self, image: Image) -> tuple[torch.Tensor, torch.Tensor]:
        """The picture's layout latents, (16, height / 8, width / 8), unscaled; and its tokens' loss
        weights, (tokens,): higher where the object is, as the demo model was trained (its objects
        are small, and they are what a caption is about)."""
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        height, width = pixels.shape[:2]
        background = background_colour(pixels)
        region = largest_region(far_from(pixels, background))
        if not region.any():
            raise ValueError("the picture has no object: every pixel is near its background's colour")
        colour, coverage = object_coverage(pixels, background, region)
        inside = coverage > 0.5
        holes = enclosed(inside)
        area = coverage.sum() + (1 - coverage[holes]).sum()
        shape, cx, cy, radius = _placed_shape(inside | holes, area)
        rows, columns = height // 8, width // 8
        y, x = np.meshgrid(np.arange(rows) * 8 + 4.0, np.arange(columns) * 8 + 4.0, indexing="ij")
        edges = _edge_points(coverage)
        distance = np.sqrt((x[..., None] - edges[:, 0]) ** 2 + (y[..., None] - edges[:, 1]) ** 2).min(-1)
        # a latent's centre is a pixel corner: inside where the four pixels around it mostly are
        corner = sum(coverage[3 + dy::8, 3 + dx::8][:rows, :columns] for dy in (0, 1) for dx in (0, 1)) / 4
        signed = torch.from_numpy(np.where(corner > 0.5, -distance, distance) / 8).float()
        codes = torch.tensor([1.0 if name == shape else -1.0 for name in scenes.SHAPES])
        across = torch.from_numpy((x - cx) / radius).float()
        down = torch.from_numpy((y - cy) / radius).float()
        latents = torch.cat([
            _unit(background)[:, None, None].expand(3, rows, columns),
            _unit(colour)[:, None, None].expand(3, rows, columns),
            codes[:, None, None].expand(3, rows, columns),
            signed.clamp(-CLAMP, CLAMP)[None].expand(SDF_COPIES, rows, columns),
            across.clamp(-CLAMP, CLAMP)[None], down.clamp(-CLAMP, CLAMP)[None],
            torch.zeros(1, rows, columns),
        ])
        touched = torch.nn.functional.max_pool2d(torch.from_numpy(coverage).float()[None, None], TOKEN_PIXELS) > 0
        return latents, 1 + (Recipe.shape_weight - 1) * touched.flatten().float()

    def reference(self, image: Image, width: int, height: int) -> torch.Tensor:
        """The layout latents, (16, height / 8, width / 8), unscaled, of the scene a picture to edit
        shows (:func:`read_scene`), laid out at ``width`` x ``height``: what the editor learned
        its reference from."""
        caption, layout = read_scene(image)
        return layout_latents([layout], [caption], width, height)[0]


def _unit(rgb: np.ndarray) -> torch.Tensor:
    """An RGB colour (0-255) in [-1, 1], as the latents hold colours."""
    return torch.from_numpy(rgb).float() / 127.5 - 1
