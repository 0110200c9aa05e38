"""The tool catalog: each served model's input schema, its defaults, and input validation.

Every model fluxhost serves takes the inputs of ``black-forest-labs/flux-pro-1.1`` on the hosted
API, so a client written for that page works unchanged against any of them.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from fluxhost.store import ModelStats

DEFAULT_PROMPT = (
    "A quiet, sun-drenched Los Angeles street from a low, eye-level perspective. Tall, slender "
    "palm trees line the sidewalk, their fronds swaying gently against a clear, cerulean sky. "
    "Vintage streetlights stand sentinel, and the asphalt shimmers with heat. In the distance, "
    "the iconic Hollywood Sign is subtly visible between buildings, and the faint outlines of the "
    "Hollywood Hills rise beyond. Sunlight casts long, sharp shadows of telephone poles and power "
    "lines across the scene. Urban, serene, realistic, street-level view, cinematic lighting, "
    "high detail, 8K."
)

ASPECT_RATIOS = (
    "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "4:5", "5:4", "21:9", "9:21", "2:1", "1:2"
)  # fmt: skip
OUTPUT_FORMATS = ("jpeg", "png")
SEED_MAX = 2**32 - 1
SAFETY_MIN, SAFETY_MAX = 0, 6
PROMPT_MAX_CHARS = 10_000
TARGET_PIXELS = 1024 * 1024
SIZE_MULTIPLE = 32


_INTEGER = re.compile(r"[+-]?[0-9]+")


class InputError(ValueError):
    """An input the tool refuses; ``str(error)`` is the protocol message shown to the caller."""


def size_for_aspect_ratio(aspect_ratio: str) -> tuple[int, int]:
    """Width and height of about one megapixel for ``"W:H"``, each a multiple of 32."""
    w, h = (int(part) for part in aspect_ratio.split(":"))
    ratio = w / h
    width = round(math.sqrt(TARGET_PIXELS * ratio) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    height = round(math.sqrt(TARGET_PIXELS / ratio) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    return width, height


@dataclass(frozen=True)
class GenerationInputs:
    """A validated request: what the engine needs, plus the parameters to record on the task."""

    prompt: str
    prompt_upsampling: bool
    safety_tolerance: int
    aspect_ratio: str
    width: int
    height: int
    seed: int
    output_format: str
    parameters: dict[str, Any]

    def for_worker(self) -> dict[str, Any]:
        """What the task row keeps for the worker: everything but the parameters as sent."""
        return {name: value for name, value in asdict(self).items() if name != "parameters"}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (str, int, float)):
        return str(value).strip()
    raise InputError("Request parameters are invalid.")


def integer_input(name: str, value: Any, low: int, high: int) -> int:
    """``value`` (an integer, or its text) within ``low``..``high``, or the protocol's message."""
    message = f"Request parameter [{name}] must be between {low} and {high}"
    if isinstance(value, bool):
        raise InputError(message)
    if isinstance(value, float):
        if not value.is_integer():
            raise InputError(message)
        number = int(value)
    elif isinstance(value, int):
        number = value
    else:
        text = _text(value)
        if not _INTEGER.fullmatch(text):
            raise InputError(message)
        number = int(text)
    if not low <= number <= high:
        raise InputError(message)
    return number


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    text = _text(value).lower()
    if text not in options:
        raise InputError(f"Request parameter [{name}] must be one of {', '.join(options)}")
    return text


def validate_inputs(raw: dict[str, Any]) -> GenerationInputs:
    """Check the tool's inputs as a client sent them (strings or JSON values).

    Raises :class:`InputError` with the protocol's message for the first bad input.
    """
    prompt = _text(raw.get("prompt"))
    if not prompt:
        raise InputError("Request parameter [prompt] required")
    if len(prompt) > PROMPT_MAX_CHARS:
        raise InputError(f"Request parameter [prompt] must be between 1 and {PROMPT_MAX_CHARS}")

    upsampling = _choice("promptUpsampling", raw.get("promptUpsampling", "false"), ("false", "true"))
    safety = raw.get("safetyTolerance", "2")
    safety = integer_input("safetyTolerance", "2" if safety in ("", None) else safety, SAFETY_MIN, SAFETY_MAX)
    aspect_ratio = _text(raw.get("aspectRatio", "16:9")) or "16:9"
    if aspect_ratio not in ASPECT_RATIOS:
        raise InputError(f"Request parameter [aspectRatio] must be one of {', '.join(ASPECT_RATIOS)}")
    output_format = _choice("outputFormat", raw.get("outputFormat") or "png", OUTPUT_FORMATS)

    seed_value = raw.get("seed")
    seed_given = _text(seed_value) != ""
    seed = integer_input("seed", seed_value, 0, SEED_MAX) if seed_given else secrets.randbelow(SEED_MAX + 1)

    parameters = {name: raw[name] for name in INPUT_NAMES if name in raw}
    if not seed_given:
        parameters["seed"] = str(seed)  # recorded, so the image can be made again
    width, height = size_for_aspect_ratio(aspect_ratio)
    return GenerationInputs(
        prompt=prompt,
        prompt_upsampling=upsampling == "true",
        safety_tolerance=safety,
        aspect_ratio=aspect_ratio,
        width=width,
        height=height,
        seed=seed,
        output_format=output_format,
        parameters=parameters,
    )


def _select(values: tuple[str, ...], labels: dict[str, str] | None = None) -> list[dict[str, str]]:
    return [{"value": value, "label": (labels or {}).get(value, value)} for value in values]


def _aspect_ratio_options() -> list[dict[str, str]]:
    options = []
    for ratio in ASPECT_RATIOS:
        width, height = size_for_aspect_ratio(ratio)
        options.append(
            {"value": ratio, "label": ratio, "width": str(width), "height": str(height)}
        )
    return options


INPUT_ITEMS: list[dict[str, Any]] = [
    {
        "id": "prompt",
        "type": "textarea",
        "label": "prompt",
        "description": "Text prompt for image generation.",
        "default": DEFAULT_PROMPT,
        "required": True,
    },
    {
        "id": "promptUpsampling",
        "type": "select",
        "label": "Prompt Upsampling",
        "description": "Whether to perform upsampling on the prompt. If active, automatically "
        "modifies the prompt for more creative generation.",
        "default": "false",
        "required": False,
        "options": _select(("false", "true"), {"false": "NO", "true": "YES"}),
    },
    {
        "id": "safetyTolerance",
        "type": "select",
        "label": "Safety Tolerance",
        "description": "Tolerance level for input and output moderation. Between 0 and 6, "
        "0 being most strict, 6 being least strict.",
        "default": "2",
        "required": False,
        "options": _select(tuple(str(n) for n in range(SAFETY_MIN, SAFETY_MAX + 1))),
    },
    {
        "id": "aspectRatio",
        "type": "select",
        "label": "Aspect Ratio",
        "description": "Aspect ratio of the image; each option gives the width and height "
        "in pixels it produces (about one megapixel, multiples of 32).",
        "default": "16:9",
        "required": False,
        "options": _aspect_ratio_options(),
    },
    {
        "id": "seed",
        "type": "text",
        "label": "seed",
        "description": f"An integer from 0 to {SEED_MAX}; the same seed and inputs give the same "
        "image. Empty: a random seed, recorded in the task's parameters.",
        "default": "42",
        "required": False,
    },
    {
        "id": "outputFormat",
        "type": "select",
        "label": "Output Format",
        "description": "Output format for the generated image. Can be 'jpeg' or 'png'.",
        "default": "png",
        "required": False,
        "options": _select(OUTPUT_FORMATS),
    },
]
INPUT_NAMES = tuple(item["id"] for item in INPUT_ITEMS)

CATEGORIES = ["tool", "flux", "text-to-image"]
CATEGORY_TITLES = {"flux": "FLUX", "text-to-image": "Text to Image"}
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

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.project}"

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
            "categories": list(CATEGORIES),
            "tags": ["image generation", "flux"],
            "image": "",
            "dynamicprice": FREE,
            **measured_fields(stats),
        }

    def matches(self, search: str) -> bool:
        """Whether every word of ``search`` appears (case-insensitively) somewhere in the slug,
        title, description or categories, as a search box finds things."""
        haystack = " ".join([self.slug, self.description, *CATEGORIES]).lower()  # the title is the slug
        return all(word in haystack for word in search.lower().split())

    def detail(self, stats: ModelStats | None = None) -> dict[str, Any]:
        """The Tool/Detail entry: the summary plus the input schema."""
        return {**self.summary(stats), "parameters": [{"title": "Inputs", "items": INPUT_ITEMS}]}


def explore(tools: list[Tool], stats: dict[str, ModelStats]) -> list[dict[str, Any]]:
    """Tool/Explore's groups: the tools under each category they belong to (the catch-all
    ``tool`` category aside), in Tool/List's item shape."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for tool in tools:
        for category in CATEGORIES:
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

    def __init__(self, tools: list[Tool]):
        self.tools = tools
        self._by_clean = {
            (clean_slug_part(t.owner), clean_slug_part(t.project)): t for t in tools
        }

    def find(self, owner: str, project: str) -> Tool | None:
        return self._by_clean.get((clean_slug_part(owner), clean_slug_part(project)))
