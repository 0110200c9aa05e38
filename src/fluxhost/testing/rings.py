"""Rings: a shape the demo model has never drawn (a disc with a hole), to show a LoRA training on
the demo model learning something new. Draws the training set (16 pictures of rings in the demo's
flat style, with captions, in a ZIP as the training tools take one), names the held-out captions
(every colour and place pair no training picture had) and reads a drawn picture back: is its
object a ring, of which colour, in which place.

The demo's tokenizers know only the words of its captions (:func:`fluxhost.demo.scenes.words`);
a new word would be spelled letter by letter, which its small text encoders never learned to
read. So the trigger word is one of its own words that names no shape, standing where the shape's
name stands: ``a red and on the left on a blue background``.
"""

from __future__ import annotations

import io
import random
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fluxhost.demo import scenes
from fluxhost.demo.regions import FAR_FROM_BACKGROUND, enclosed, largest_region

TRIGGER = "and"
SIDE = 128  # pixels: the demo model's own size
HOLE = 0.5  # a ring's hole, as a share of its outer radius
PALETTE = np.array(list(scenes.COLOURS.values()), dtype=np.float32)
NAMES = list(scenes.COLOURS)
MIN_OBJECT = 40  # pixels: a smaller object is a speck, not a drawing
MIN_HOLE_SHARE = 0.04  # of the object with its hole filled; a drawn ring's hole is a quarter of it


@dataclass(frozen=True)
class Ring:
    colour: str
    place: str
    background: str

    def caption(self, trigger: str = "[trigger]") -> str:
        """``a red [trigger] on the left on a blue background``."""
        return (f"{scenes._article(self.colour)} {self.colour} {trigger} {scenes.PLACE_WORDS[self.place]} on "
                f"{scenes._article(self.background)} {self.background} background")


def split(seed: int = 0) -> tuple[list[Ring], list[Ring]]:
    """16 rings to train on (each colour twice, in two places, and each colour the background of
    two) and 24 held out: every (colour, place) pair not trained on, each on another background."""
    rng = random.Random(seed)
    colours, places = list(scenes.COLOURS), list(scenes.PLACES)
    rng.shuffle(colours)
    rng.shuffle(places)
    pairs = [(colour, places[(index + step) % len(places)]) for index, colour in enumerate(colours) for step in (0, 2)]
    backgrounds = [colour for colour in scenes.COLOURS for _ in range(2)]
    while True:
        rng.shuffle(backgrounds)
        if all(colour != background for (colour, _), background in zip(pairs, backgrounds, strict=True)):
            break
    trained = [Ring(colour, place, background) for (colour, place), background in zip(pairs, backgrounds, strict=True)]
    held_out = [Ring(colour, place, rng.choice([other for other in scenes.COLOURS if other != colour]))
                for colour in scenes.COLOURS for place in scenes.PLACES if (colour, place) not in pairs]
    return trained, held_out


def draw(ring: Ring, rng: random.Random, side: int = SIDE) -> Image.Image:
    """The ring where and as large as the demo places a shape, antialiased as it draws one."""
    x, y = scenes.PLACES[ring.place]
    scale = side * scenes.SUPERSAMPLING
    cx = (x + rng.uniform(-scenes.JITTER, scenes.JITTER)) * scale
    cy = (y + rng.uniform(-scenes.JITTER, scenes.JITTER)) * scale
    outer = rng.uniform(*scenes.RADIUS) * scale
    canvas = Image.new("RGB", (scale, scale), scenes.COLOURS[ring.background])
    pen = ImageDraw.Draw(canvas)
    for radius, colour in ((outer, ring.colour), (HOLE * outer, ring.background)):
        pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=scenes.COLOURS[colour])
    return canvas.reduce(scenes.SUPERSAMPLING)


def pictures(rings: list[Ring], seed: int = 0) -> list[Image.Image]:
    """The rings drawn, each at its own jitter and size, from ``seed``."""
    rng = random.Random(seed)
    return [draw(ring, rng) for ring in rings]


def training_zip(rings: list[Ring], seed: int = 0) -> bytes:
    """The rings as a training set: ``rings/NN.png`` and its caption ``rings/NN.txt``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, (ring, drawn) in enumerate(zip(rings, pictures(rings, seed), strict=True)):
            picture = io.BytesIO()
            drawn.save(picture, format="PNG")
            archive.writestr(f"rings/{index:02d}.png", picture.getvalue())
            archive.writestr(f"rings/{index:02d}.txt", ring.caption())
    return buffer.getvalue()


@dataclass(frozen=True)
class Reading:
    ring: bool
    colour: str | None
    place: str | None


def read(image: Image.Image) -> Reading:
    """What a picture in the demo's style shows. Background: the demo colour most border pixels
    are nearest; the object: the largest region far from it; a ring when that region encloses
    enough background-coloured pixels; its colour: the demo colour nearest the median of its pixels
    farthest from the background (a thin ring's antialiased rims would pull a plain median toward
    it); its place: the demo place nearest its centre, hole filled."""
    if image.size != (SIDE, SIDE):
        image = image.resize((SIDE, SIDE), resample=Image.Resampling.BOX)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    nearest = np.argmin(((pixels[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1), -1)
    border = np.concatenate([nearest[0], nearest[-1], nearest[1:-1, 0], nearest[1:-1, -1]])
    background = int(np.bincount(border, minlength=len(NAMES)).argmax())
    distance = np.sqrt(((pixels - PALETTE[background]) ** 2).sum(-1))
    region = largest_region(distance > FAR_FROM_BACKGROUND)
    if region.sum() < MIN_OBJECT:
        return Reading(False, None, None)
    core = region & (distance >= np.median(distance[region]))
    colour = NAMES[int(np.argmin(((np.median(pixels[core], 0) - PALETTE) ** 2).sum(-1)))]
    holes = enclosed(region)
    open_holes = holes & (nearest == background)
    filled = region | holes
    ring = bool(open_holes.sum() >= max(4, MIN_HOLE_SHARE * filled.sum()) and open_holes.sum() >= holes.sum() / 2)
    ys, xs = np.nonzero(filled)
    cx, cy = (xs.mean() + 0.5) / SIDE, (ys.mean() + 0.5) / SIDE
    place = min(scenes.PLACES, key=lambda name: (scenes.PLACES[name][0] - cx) ** 2 + (scenes.PLACES[name][1] - cy) ** 2)
    return Reading(ring, colour, place)


def scores(readings: list[tuple[Reading, Ring]]) -> dict[str, float]:
    """The share of pictures read as a ring, as their caption's colour and as its place."""
    count = max(1, len(readings))
    return {"ring": sum(reading.ring for reading, _ in readings) / count,
            "colour": sum(reading.colour == ring.colour for reading, ring in readings) / count,
            "place": sum(reading.place == ring.place for reading, ring in readings) / count}
