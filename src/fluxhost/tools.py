"""The tool catalog: the models this server serves, as Tool/List, Tool/Detail and Tool/Explore
show them, each with its own input schema."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fluxhost.inputs import PROMPT_MAX_CHARS, InputSchema, guidance_input, steps_input, strength_input
from fluxhost.settings import ModelSettings
from fluxhost.store.tasks import ModelStats

CATEGORIES = ["tool", "flux", "text-to-image"]
EDIT_CATEGORIES = ["tool", "flux", "image-to-image", "image-editing"]
CATEGORY_TITLES = {"flux": "FLUX", "text-to-image": "Text to Image", "image-to-image": "Image to Image",
                   "image-editing": "Image Editing"}
# A self-hosted run costs nothing: the hosted API's price list, with its one flat tier at zero.
FREE = json.dumps([{"inputs": {}, "price": 0, "priceMethod": "cpr"}])


def measured_fields(stats: ModelStats | None) -> dict[str, Any]:
    """The hosted API's ``taskstat`` and ``computingtime`` for a tool, from this server's tasks."""
    stats = stats or ModelStats(0, 0, 0, None, None)
    fields: dict[str, Any] = {
        "taskstat": {
            "runcount": str(stats.runs),
            "successcount": str(stats.successes),
            "errorcount": str(stats.errors),
            "lastruntime": str(int(stats.last_run_at or 0)),
        }
    }
    if stats.mean_seconds is not None:
        seconds = stats.mean_seconds
        fields["computingtime"] = f"{seconds:.0f} seconds" if seconds >= 10 else f"{seconds:.1f} seconds"
    return fields


@dataclass(frozen=True)
class Tool:
    """One model as the catalog shows it."""

    owner: str
    project: str
    description: str
    schema: InputSchema = field(default_factory=InputSchema)
    category_names: tuple[str, ...] = tuple(CATEGORIES)

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.project}"

    @property
    def categories(self) -> list[str]:
        return list(self.category_names)

    def summary(self, stats: ModelStats | None = None) -> dict[str, Any]:
        """The Tool/List entry (every value a string or list, as the hosted API sends)."""
        return {
            "id": self.slug,
            "title": self.slug,
            "slugowner": self.owner,
            "slugproject": self.project,
            "cleanslugowner": self.owner,
            "cleanslugproject": self.project,
            "description": self.description,
            "seodescription": self.description,
            "categories": self.categories,
            "tags": ["image generation", "flux"],
            "image": "",
            "dynamicprice": FREE,
            **measured_fields(stats),
        }

    def matches(self, search: str) -> bool:
        """Whether every word of ``search`` appears (case-insensitively) somewhere in the slug,
        title, description or categories, as a search box finds things."""
        haystack = " ".join([self.slug, self.description, *self.categories]).lower()  # the title is the slug
        return all(word in haystack for word in search.lower().split())

    def detail(self, stats: ModelStats | None = None) -> dict[str, Any]:
        """The Tool/Detail entry: the summary plus the input schema."""
        return {**self.summary(stats), "parameters": [{"title": "Inputs", "items": self.schema.items()}]}


def explore(tools: list[Tool], stats: dict[str, ModelStats]) -> list[dict[str, Any]]:
    """Tool/Explore's groups: the tools under each category they belong to (the catch-all
    ``tool`` category aside), in Tool/List's item shape."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for tool in tools:
        for category in tool.categories:
            if category != "tool":
                groups.setdefault(category, []).append(tool.summary(stats.get(tool.slug)))
    return [
        {"id": category, "title": CATEGORY_TITLES.get(category, category), "tools": items, "total": str(len(items))}
        for category, items in groups.items()
    ]


def clean_slug_part(part: str) -> str:
    """The hosted site writes version dots as dashes too: ``flux-pro-1-1`` is ``flux-pro-1.1``."""
    return part.strip().lower().replace(".", "-")


class Catalog:
    """The models this server serves, found by slug in either spelling."""

    @classmethod
    def from_models(cls, models: dict[str, ModelSettings], notes: dict[str, str] | None = None,
                    max_prompt_chars: int = PROMPT_MAX_CHARS) -> Catalog:
        """``notes``: input id -> what this server does with it, added to its description."""
        tools = []
        for slug, model in models.items():
            extra = [steps_input(model.steps) if name == "steps" else guidance_input(model.guidance)
                     for name in model.exposed_inputs]
            if model.kind == "image-to-image":
                extra.append(strength_input(model.strength))
            owner, project = slug.split("/", 1)
            schema = InputSchema(tuple(extra), tuple((notes or {}).items()), takes_image=model.kind != "text-to-image",
                                 max_prompt_chars=max_prompt_chars)
            categories = CATEGORIES if model.kind == "text-to-image" else EDIT_CATEGORIES
            tools.append(Tool(owner, project, model.description, schema, tuple(categories)))
        return cls(tools)

    def __init__(self, tools: list[Tool]):
        self.tools = tools
        self._by_clean = {
            (clean_slug_part(t.owner), clean_slug_part(t.project)): t for t in tools
        }

    def find(self, owner: str, project: str) -> Tool | None:
        return self._by_clean.get((clean_slug_part(owner), clean_slug_part(project)))

    def description_of(self, slug: str) -> str:
        tool = self.find(*slug.split("/", 1))
        return tool.description if tool else ""
