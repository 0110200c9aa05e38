"""The tool catalog: the models this server serves, each as a tool with a slug, what it does and
what it takes beyond a prompt. How a door lists and describes them is the door's business."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Literal

from fluxhost.family import Kind, member
from fluxhost.settings import ModelSettings

# The seed tool's example prompt, the default its page shows for ``prompt``.
DEFAULT_PROMPT = (
    "A quiet, sun-drenched Los Angeles street from a low, eye-level perspective. Tall, slender "
    "palm trees line the sidewalk, their fronds swaying gently against a clear, cerulean sky. "
    "Vintage streetlights stand sentinel, and the asphalt shimmers with heat. In the distance, "
    "the iconic Hollywood Sign is subtly visible between buildings, and the faint outlines of the "
    "Hollywood Hills rise beyond. Sunlight casts long, sharp shadows of telephone poles and power "
    "lines across the scene. Urban, serene, realistic, street-level view, cinematic lighting, "
    "high detail, 8K."
)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "text-to-image": ("tool", "flux", "text-to-image"),
    "edit": ("tool", "flux", "image-to-image", "image-editing"),
    "image-to-image": ("tool", "flux", "image-to-image", "image-editing"),
    "upscale": ("tool", "flux", "image-to-image", "upscaler"),
    "train": ("tool", "flux", "training", "lora"),
}

IMAGE_KINDS = ("edit", "image-to-image", "upscale")  # the kinds whose Runs bring an input image


@dataclass(frozen=True)
class Tool:
    """One served model as clients see it."""

    owner: str
    project: str
    description: str
    kind: Kind = "text-to-image"
    tuning: tuple[Literal["steps", "guidance"], ...] = ()  # inputs beyond the seed tool's that a Run may set
    steps: int = 28  # the defaults of those inputs
    guidance: float = 3.5
    strength: float = 0.85  # image-to-image: how far from the input image to go
    title: str = ""
    inputs: tuple[str, ...] | None = None
    """The inputs it takes, by the names its clients send (a family tool's); None: the seed tool's
    inputs, with the input image for an image tool and the model's exposed ``tuning``."""
    images: int = 0  # input images it reads; 0: by its kind (one for an image tool)
    image_required: bool = False
    megapixels: float = 1.0  # the size its aspect ratios give
    loras: tuple[str, ...] = ()  # the server's LoRA library, by name, for a tool that takes adapters
    example_prompt: str = ""  # a prompt it draws as asked, for forms' placeholders

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.project}"

    @property
    def number(self) -> int:
        """Its numeric id, as the hosted API lists tools: the same for a slug on every server."""
        return zlib.crc32(self.slug.lower().encode()) % 1_000_000

    @property
    def cover(self) -> str:
        """Its cover picture's file name in the web folder's ``covers`` (drawn by the demo model:
        ``python -m fluxhost.demo.covers``): its own for a tool of the hosted family."""
        return f"{cover_name(self.slug)}.jpg" if member(self.slug) else f"{GENERIC_COVER}.jpg"

    @property
    def takes_image(self) -> bool:
        """Whether a Run must bring an input image: edit, image-to-image and upscale tools."""
        return self.kind in IMAGE_KINDS or self.image_required

    @property
    def redraws(self) -> bool:
        """Whether an input image is redrawn (image-to-image), as far as a strength says."""
        return self.kind == "image-to-image" or "strength" in (self.inputs or ())

    @property
    def max_images(self) -> int:
        return self.images or (1 if self.kind in IMAGE_KINDS else 0)

    @property
    def categories(self) -> list[str]:
        return list(CATEGORIES[self.kind])

    def matches(self, search: str) -> bool:
        """Whether every word of ``search`` appears (case-insensitively) somewhere in the slug,
        description or categories, as a search box finds things."""
        haystack = " ".join([self.slug, self.title, self.description, *self.categories]).lower()
        return all(word in haystack for word in search.lower().split())

    @classmethod
    def of(cls, slug: str, model: ModelSettings) -> Tool:
        """The tool serving ``slug`` with ``model``; a slug of the hosted family takes the family's
        title and inputs (and its kind: what the model must serve for it)."""
        owner, project = slug.split("/", 1)
        tool = cls(owner, project, model.description, model.kind, tuple(model.exposed_inputs), model.steps,
                   model.guidance, model.strength, title=slug, example_prompt=model.example_prompt)
        known = member(slug)
        if known is not None:
            tool = replace(tool, kind=known.kind, title=known.title, inputs=known.inputs, images=known.images,
                           image_required=known.image_required, megapixels=known.megapixels)
        return tool


GENERIC_COVER = "flux"


def cover_name(slug: str) -> str:
    """A cover's file name (without ``.jpg``) for ``slug``."""
    return "".join(char if char.isalnum() else "-" for char in slug.lower())


def clean_slug_part(part: str) -> str:
    """The hosted site writes version dots as dashes too: ``flux-pro-1-1`` is ``flux-pro-1.1``."""
    return part.strip().lower().replace(".", "-")


class Catalog:
    """The models this server serves, found by slug in either spelling."""

    @classmethod
    def from_models(cls, models: dict[str, ModelSettings], loras: tuple[str, ...] = ()) -> Catalog:
        """The tools serving ``models``; ``loras``: the server's LoRA library, offered by the tools
        that take adapters."""
        return cls([replace(tool, loras=loras) if "selectedLoraModel" in (tool.inputs or ()) else tool
                     for tool in (Tool.of(slug, model) for slug, model in models.items())])

    def __init__(self, tools: list[Tool]):
        self.tools = tools
        self._by_clean = {(clean_slug_part(t.owner), clean_slug_part(t.project)): t for t in tools}

    def find(self, owner: str, project: str) -> Tool | None:
        return self._by_clean.get((clean_slug_part(owner), clean_slug_part(project)))

    def find_slug(self, slug: str) -> Tool | None:
        owner, _, project = slug.partition("/")
        return self.find(owner, project)

    def description_of(self, slug: str) -> str:
        tool = self.find_slug(slug)
        return tool.description if tool else ""
