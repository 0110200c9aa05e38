"""The demo model's world: scenes of one or two flat shapes on a plain background, their captions,
and a renderer that draws a scene at any size (the seed sets the object's size and exact place).

Captions follow one grammar: ``a red circle on the left on a blue background``, ``a yellow
triangle in the center and a black square on the right on a white background``.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (245, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "purple": (140, 50, 170),
    "orange": (245, 135, 30),
}
SHAPES = ("circle", "square", "triangle")
PLACES: dict[str, tuple[float, float]] = {  # the object's centre, as fractions of width and height
    "left": (0.2, 0.5),
    "right": (0.8, 0.5),
    "top": (0.5, 0.2),
    "bottom": (0.5, 0.8),
    "center": (0.5, 0.5),
}
PLACE_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
               "center": "in the center"}
RADIUS = (0.12, 0.16)  # an object's half-size, as a fraction of the image's shorter side
JITTER = 0.03  # how far an object may stray from its place, as a fraction of width or height
SUPERSAMPLING = 4  # shapes are drawn this much larger and reduced: antialiased edges


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    place: str

    @property
    def words(self) -> str:
        return f"{_article(self.colour)} {self.colour} {self.shape} {PLACE_WORDS[self.place]}"


@dataclass(frozen=True)
class Caption:
    things: tuple[Thing, ...]
    background: str

    def __str__(self) -> str:
        background = f"{_article(self.background)} {self.background} background"
        return " and ".join(thing.words for thing in self.things) + f" on {background}"


@dataclass(frozen=True)
class Drawn:
    """A thing as drawn: its centre and half-size as fractions (of width, of height, of the shorter side)."""

    thing: Thing
    x: float
    y: float
    radius: float


def single_captions() -> list[Caption]:
    """Every one-object caption: shape x colour x place x background (the background unlike the object)."""
    return [Caption((Thing(shape, colour, place),), background)
            for shape, colour, place, background in itertools.product(SHAPES, COLOURS, PLACES, COLOURS)
            if colour != background]


def held_out_captions() -> list[Caption]:
    """One one-object caption in ten, never a training caption: what the model must compose."""
    captions = single_captions()
    return sorted(random.Random(15).sample(captions, len(captions) // 10), key=str)


def training_caption(rng: random.Random, two_things: float = 0.4) -> Caption:
    """A random caption outside :func:`held_out_captions`: one thing, or two in different places."""
    held_out = _held_out_set()
    while True:
        background = rng.choice(list(COLOURS))
        count = 2 if rng.random() < two_things else 1
        places = rng.sample(list(PLACES), count)
        colours = [rng.choice([colour for colour in COLOURS if colour != background]) for _ in places]
        things = tuple(Thing(rng.choice(SHAPES), colour, place) for colour, place in zip(colours, places, strict=True))
        caption = Caption(things, background)
        if caption not in held_out:
            return caption


@functools.cache
def _held_out_set() -> frozenset[Caption]:
    return frozenset(held_out_captions())


def lay_out(caption: Caption, rng: random.Random) -> list[Drawn]:
    """Where each thing goes: its place, moved a little, at a random size."""
    return [placed(thing, rng) for thing in caption.things]


def placed(thing: Thing, rng: random.Random, radius: float | None = None) -> Drawn:
    """``thing`` at its place, moved a little, at ``radius`` (default: a random size)."""
    x, y = PLACES[thing.place]
    return Drawn(thing, x + rng.uniform(-JITTER, JITTER), y + rng.uniform(-JITTER, JITTER),
                 radius if radius is not None else rng.uniform(*RADIUS))


def render(caption: Caption, layout: list[Drawn], width: int, height: int,
           window: tuple[int, int, int, int] | None = None) -> Image.Image:
    """The scene as an RGB image of ``width`` x ``height``, or the part of it in ``window``
    (left, top, width, height)."""
    left, top, window_width, window_height = window or (0, 0, width, height)
    canvas = Image.new("RGB", (window_width * SUPERSAMPLING, window_height * SUPERSAMPLING),
                       COLOURS[caption.background])
    for item in layout:
        _draw(canvas, item, width, height, left, top, COLOURS[item.thing.colour])
    return canvas.reduce(SUPERSAMPLING)


def shape_masks(layout: list[Drawn], width: int, height: int) -> np.ndarray:
    """How much of each pixel each shape covers, in [0, 1]: (len(SHAPES), height, width)."""
    masks = np.zeros((len(SHAPES), height, width), dtype=np.float32)
    for index, shape in enumerate(SHAPES):
        items = [item for item in layout if item.thing.shape == shape]
        if items:
            canvas = Image.new("L", (width * SUPERSAMPLING, height * SUPERSAMPLING), 0)
            for item in items:
                _draw(canvas, item, width, height, 0, 0, 255)
            masks[index] = np.asarray(canvas.reduce(SUPERSAMPLING), dtype=np.float32) / 255
    return masks


def _draw(canvas: Image.Image, item: Drawn, width: int, height: int, left: int, top: int,
          fill: tuple[int, int, int] | int) -> None:
    """One thing of a ``width`` x ``height`` scene onto a supersampled canvas whose corner is the
    scene's pixel (``left``, ``top``)."""
    scale = SUPERSAMPLING
    cx, cy = (item.x * width - left) * scale, (item.y * height - top) * scale
    r = item.radius * min(width, height) * scale
    draw = ImageDraw.Draw(canvas)
    if item.thing.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif item.thing.shape == "square":
        side = 0.9 * r
        draw.rectangle((cx - side, cy - side, cx + side, cy + side), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)


def words() -> list[str]:
    """Every word a caption may use."""
    return sorted({word for caption in single_captions() for word in str(caption).split()} | {"and"})
