"""Edits of the demo's scenes: an instruction, and the scene before and after it, for the demo's
editing model (FLUX.1 Kontext's way: the picture to edit beside the one being drawn).

Five kinds of instruction, each changing one thing and keeping the rest where it was:

- recolour: ``make the circle blue``
- move: ``move the square to the left``
- background: ``make the background green``
- add: ``add a yellow triangle at the top`` (to a scene of one shape)
- remove: ``remove the circle`` (from a scene of two)

A shape is named by its shape alone when the scene has one of that shape, else by colour and
shape (``make the red circle blue``). One change in ten of each kind (the shape and the new colour
of a recolouring, the shape and the new place of a move, the old and new backgrounds, the shape,
colour and place of an addition, the shape and colour of a removal) is held out: no training pair
makes it, and the tests ask for exactly those.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass, replace

from fluxhost.demo.scenes import COLOURS, PLACES, SHAPES, Caption, Drawn, Thing, lay_out, placed

KINDS = ("recolour", "move", "background", "add", "remove")
PLACE_TO = {"left": "to the left", "right": "to the right", "top": "to the top", "bottom": "to the bottom",
            "center": "to the center"}
VERBS = ("make", "move", "add", "remove", "to")
"""The instruction words no caption uses."""


@dataclass(frozen=True)
class Edit:
    """One instruction applied to a scene: ``before`` and ``after`` hold the same things in the
    same order, but for the one changed (an added thing comes last, a removed one is left out)."""

    instruction: str
    before: tuple[Drawn, ...]
    after: tuple[Drawn, ...]
    background_before: str
    background_after: str
    key: tuple[str, ...]  # the change: its kind, then what it changes to (see :func:`all_keys`)

    @property
    def kind(self) -> str:
        return self.key[0]

    @property
    def caption_before(self) -> Caption:
        return Caption(tuple(item.thing for item in self.before), self.background_before)

    @property
    def caption_after(self) -> Caption:
        return Caption(tuple(item.thing for item in self.after), self.background_after)


def _name(thing: Thing, things: tuple[Thing, ...]) -> str:
    """How an instruction names ``thing`` among ``things``: by shape, or by colour and shape."""
    same_shape = sum(other.shape == thing.shape for other in things)
    return thing.shape if same_shape == 1 else f"{thing.colour} {thing.shape}"


def all_keys(kind: str) -> list[tuple[str, ...]]:
    """Every change of ``kind``, as :attr:`Edit.key` names it."""
    colours, places = list(COLOURS), list(PLACES)
    values = {
        "recolour": itertools.product(SHAPES, colours),
        "move": itertools.product(SHAPES, places),
        "background": ((old, new) for old, new in itertools.product(colours, colours) if old != new),
        "add": itertools.product(SHAPES, colours, places),
        "remove": itertools.product(SHAPES, colours),
    }[kind]
    return [(kind, *value) for value in values]


@functools.cache
def held_out_keys() -> frozenset[tuple[str, ...]]:
    """One change in ten of each kind (at least two), fixed: never in a training pair."""
    rng = random.Random(32)
    held = []
    for kind in KINDS:
        keys = all_keys(kind)
        held += rng.sample(keys, max(2, len(keys) // 10))
    return frozenset(held)


def _scene(rng: random.Random, count: int) -> tuple[str, tuple[Drawn, ...]]:
    background = rng.choice(list(COLOURS))
    places = rng.sample(list(PLACES), count)
    things = tuple(Thing(rng.choice(SHAPES), rng.choice([colour for colour in COLOURS if colour != background]), place)
                   for place in places)
    return background, tuple(lay_out(Caption(things, background), rng))


def random_edit(rng: random.Random, kind: str | None = None) -> Edit:
    """One edit of a random scene (``kind``, or any), held-out changes included."""
    kind = kind or rng.choice(KINDS)
    background, before = _scene(rng, 2 if kind == "remove" else 1 if kind == "add" else rng.choice((1, 1, 2)))
    things = tuple(item.thing for item in before)
    index = rng.randrange(len(before))
    chosen = before[index]
    name = _name(chosen.thing, things)
    after, background_after = list(before), background
    if kind == "recolour":
        colour = rng.choice([c for c in COLOURS if c not in (background, chosen.thing.colour)])
        after[index] = replace(chosen, thing=replace(chosen.thing, colour=colour))
        instruction, key = f"make the {name} {colour}", (kind, chosen.thing.shape, colour)
    elif kind == "move":
        place = rng.choice([p for p in PLACES if p not in {thing.place for thing in things}])
        after[index] = placed(replace(chosen.thing, place=place), rng, chosen.radius)
        instruction, key = f"move the {name} {PLACE_TO[place]}", (kind, chosen.thing.shape, place)
    elif kind == "background":
        background_after = rng.choice([c for c in COLOURS if c != background and c not in {t.colour for t in things}])
        instruction, key = f"make the background {background_after}", (kind, background, background_after)
    elif kind == "add":
        place = rng.choice([p for p in PLACES if p != chosen.thing.place])
        added = Thing(rng.choice(SHAPES), rng.choice([c for c in COLOURS if c != background]), place)
        after.append(placed(added, rng))
        instruction = f"add {added.words}"
        key = (kind, added.shape, added.colour, place)
    else:
        del after[index]
        instruction, key = f"remove the {name}", (kind, chosen.thing.shape, chosen.thing.colour)
    return Edit(instruction, before, tuple(after), background, background_after, key)


def training_edit(rng: random.Random) -> Edit:
    """A random edit whose change is not held out."""
    while True:
        edit = random_edit(rng)
        if edit.key not in held_out_keys():
            return edit


def held_out_edits(per_kind: int, seed: int = 0) -> list[Edit]:
    """``per_kind`` edits of each kind whose change no training pair makes, fixed by ``seed``."""
    rng = random.Random(seed)
    edits = []
    for kind in KINDS:
        found: list[Edit] = []
        while len(found) < per_kind:
            edit = random_edit(rng, kind)
            if edit.key in held_out_keys():
                found.append(edit)
        edits += found
    return edits
