"""The tool catalog: the models this server serves, each as a tool with a slug, what it does and
what it takes beyond a prompt. How a door lists and describes them is the door's business."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fluxhost.settings import ModelSettings

Kind = Literal["text-to-image", "edit", "image-to-image"]
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
}


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

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.project}"

    @property
    def takes_image(self) -> bool:
        """Edit and image-to-image tools need an input image."""
        return self.kind != "text-to-image"

    @property
    def categories(self) -> list[str]:
        return list(CATEGORIES[self.kind])

    def matches(self, search: str) -> bool:
        """Whether every word of ``search`` appears (case-insensitively) somewhere in the slug,
        description or categories, as a search box finds things."""
        haystack = " ".join([self.slug, self.description, *self.categories]).lower()
        return all(word in haystack for word in search.lower().split())

    @classmethod
    def of(cls, slug: str, model: ModelSettings) -> Tool:
        owner, project = slug.split("/", 1)
        return cls(owner, project, model.description, model.kind, tuple(model.exposed_inputs), model.steps,
                   model.guidance, model.strength)


def clean_slug_part(part: str) -> str:
    """The hosted site writes version dots as dashes too: ``flux-pro-1-1`` is ``flux-pro-1.1``."""
    return part.strip().lower().replace(".", "-")


class Catalog:
    """The models this server serves, found by slug in either spelling."""

    @classmethod
    def from_models(cls, models: dict[str, ModelSettings]) -> Catalog:
        return cls([Tool.of(slug, model) for slug, model in models.items()])

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
