"""Tool inputs: what each served model takes at Run, how Tool/Detail publishes it, and validation.

A model's :class:`InputSchema` is the seed tool's inputs (``black-forest-labs/flux-pro-1.1`` on the
hosted API, so a client written for that page works unchanged against any model) plus the extra
inputs its settings expose, such as steps and guidance. Values arrive as strings or as JSON
numbers and booleans; every refusal is an :class:`InputError` whose text is the protocol's message.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from fluxhost.workorder import WorkOrder

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
STEPS_MAX = 100
GUIDANCE_MAX = 50.0

_INTEGER = re.compile(r"[+-]?[0-9]+")
MAX_INTEGER_CHARS = 40  # past any bound here (and Python parses no more than 4,300 digits)
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)")


class InputError(ValueError):
    """An input the tool refuses; ``str(error)`` is the protocol message shown to the caller."""


def size_for_aspect_ratio(aspect_ratio: str) -> tuple[int, int]:
    """Width and height of about one megapixel for ``"W:H"``, each a multiple of 32."""
    w, h = (int(part) for part in aspect_ratio.split(":"))
    ratio = w / h
    width = round(math.sqrt(TARGET_PIXELS * ratio) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    height = round(math.sqrt(TARGET_PIXELS / ratio) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    return width, height


def text_value(value: Any) -> str:
    """An input as text, the way the hosted API reads form values."""
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
        text = text_value(value)
        if len(text) > MAX_INTEGER_CHARS or not _INTEGER.fullmatch(text):
            raise InputError(message)
        number = int(text)
    if not low <= number <= high:
        raise InputError(message)
    return number


def number_input(name: str, value: Any, low: float, high: float) -> float:
    """``value`` (a number, or its text) within ``low``..``high``, or the protocol's message."""
    if isinstance(value, bool):
        raise InputError(f"Request parameter [{name}] must be integer or float")
    text = text_value(value)
    if not _NUMBER.fullmatch(text):
        raise InputError(f"Request parameter [{name}] must be integer or float")
    number = float(text)
    if not low <= number <= high:
        raise InputError(f"Request parameter [{name}] must be between {low:g} and {high:g}")
    return number


def choice_input(name: str, value: Any, options: Iterable[str]) -> str:
    options = tuple(options)
    text = text_value(value).lower()
    if text not in options:
        raise InputError(f"Request parameter [{name}] must be one of {', '.join(options)}")
    return text


@dataclass(frozen=True)
class Input:
    """One input as Tool/Detail publishes it (``item``) and Run reads it (``read``)."""

    id: str
    type: str  # the hosted API's field types: text, textarea, select, range
    label: str
    description: str
    default: str
    required: bool = False
    options: tuple[dict[str, str], ...] = ()
    bounds: tuple[float, float, float] | None = None  # a range's min, max and step

    def item(self) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.id, "type": self.type, "label": self.label,
                                "description": self.description, "default": self.default, "required": self.required}
        if self.options:
            item["options"] = [dict(option) for option in self.options]
        if self.bounds:
            item.update(zip(("min", "max", "step"), (f"{bound:g}" for bound in self.bounds), strict=True))
        return item


def _options(values: Iterable[str], labels: dict[str, str] | None = None) -> tuple[dict[str, str], ...]:
    return tuple({"value": value, "label": (labels or {}).get(value, value)} for value in values)


def _aspect_ratio_options() -> tuple[dict[str, str], ...]:
    options = []
    for ratio in ASPECT_RATIOS:
        width, height = size_for_aspect_ratio(ratio)
        options.append({"value": ratio, "label": ratio, "width": str(width), "height": str(height)})
    return tuple(options)


SEED_TOOL_INPUTS = (
    Input("prompt", "textarea", "prompt", "Text prompt for image generation.", DEFAULT_PROMPT, required=True),
    Input("promptUpsampling", "select", "Prompt Upsampling",
          "Whether to perform upsampling on the prompt. If active, automatically modifies the prompt for more "
          "creative generation.", "false", options=_options(("false", "true"), {"false": "NO", "true": "YES"})),
    Input("safetyTolerance", "select", "Safety Tolerance",
          "Tolerance level for input and output moderation. Between 0 and 6, 0 being most strict, 6 being least "
          "strict.", "2", options=_options(str(n) for n in range(SAFETY_MIN, SAFETY_MAX + 1))),
    Input("aspectRatio", "select", "Aspect Ratio",
          "Aspect ratio of the image; each option gives the width and height in pixels it produces (about one "
          "megapixel, multiples of 32).", "16:9", options=_aspect_ratio_options()),
    Input("seed", "text", "seed",
          f"An integer from 0 to {SEED_MAX}; the same seed and inputs give the same image. Empty: a random seed, "
          "recorded in the task's parameters.", "42"),
    Input("outputFormat", "select", "Output Format",
          "Output format for the generated image. Can be 'jpeg' or 'png'.", "png", options=_options(OUTPUT_FORMATS)),
)


IMAGE_INPUTS = (
    Input("inputImage", "fileinput", "Input Image",
          "The image to edit: an uploaded file (multipart) or its URL (e.g. one File/Upload returned). PNG, JPEG "
          "or WebP.", ""),
    Input("inputImageUrl", "text", "Input Image URL", "The image to edit, by http(s) URL (instead of inputImage).",
          ""),
)
ASPECT_OF_INPUT = ("Aspect ratio of the image; empty: the input image's own (about one megapixel, multiples of "
                   "32). Each option gives the width and height in pixels it produces.")


def strength_input(default: float) -> Input:
    return Input("strength", "range", "Strength",
                 "How far to move from the input image: 0 keeps it, 1 ignores it.", f"{default:g}",
                 bounds=(0.05, 1, 0.05))


def steps_input(default: int) -> Input:
    return Input("steps", "range", "Steps", "Denoising steps: more is slower and usually finer.", str(default),
                 bounds=(1, STEPS_MAX, 1))


def guidance_input(default: float) -> Input:
    return Input("guidance", "range", "Guidance",
                 "How closely the image follows the prompt; higher is more literal.", f"{default:g}",
                 bounds=(0, GUIDANCE_MAX, 0.5))


@dataclass(frozen=True)
class ValidatedRun:
    """A Run's inputs once checked: the work order, and the parameters to record as sent."""

    order: WorkOrder
    parameters: dict[str, Any]


@dataclass(frozen=True)
class InputSchema:
    """The inputs one model takes: the seed tool's, plus ``extra`` (e.g. steps and guidance);
    ``notes`` (input id, text) add what this server does with an input to its description."""

    extra: tuple[Input, ...] = field(default_factory=tuple)
    notes: tuple[tuple[str, str], ...] = ()
    takes_image: bool = False  # edit and image-to-image models: inputImage or inputImageUrl is required
    max_prompt_chars: int = PROMPT_MAX_CHARS

    @property
    def inputs(self) -> tuple[Input, ...]:
        notes = dict(self.notes)
        seed = tuple(replace(item, description=f"{item.description} {notes[item.id]}") if item.id in notes else item
                     for item in SEED_TOOL_INPUTS)
        if not self.takes_image:
            return seed + self.extra
        seed = tuple(replace(item, default="", description=ASPECT_OF_INPUT) if item.id == "aspectRatio" else item
                     for item in seed)
        return seed[:1] + IMAGE_INPUTS + seed[1:] + self.extra

    def items(self) -> list[dict[str, Any]]:
        """Tool/Detail's ``parameters`` items."""
        return [item.item() for item in self.inputs]

    def validate(self, raw: dict[str, Any]) -> ValidatedRun:
        """Check the inputs as a client sent them; :class:`InputError` for the first bad one."""
        prompt = text_value(raw.get("prompt"))
        if not prompt:
            raise InputError("Request parameter [prompt] required")
        if len(prompt) > self.max_prompt_chars:
            raise InputError(f"Request parameter [prompt] must be between 1 and {self.max_prompt_chars} characters")

        upsampling = choice_input("promptUpsampling", raw.get("promptUpsampling", "false"), ("false", "true"))
        safety = raw.get("safetyTolerance", "2")
        safety = integer_input("safetyTolerance", "2" if safety in ("", None) else safety, SAFETY_MIN, SAFETY_MAX)
        if self.takes_image and not (raw.get("inputImage") or text_value(raw.get("inputImageUrl"))):
            raise InputError("Request parameter [inputImage] required")
        default_ratio = "" if self.takes_image else "16:9"
        aspect_ratio = text_value(raw.get("aspectRatio", default_ratio)) or default_ratio
        if aspect_ratio and aspect_ratio not in ASPECT_RATIOS:
            raise InputError(f"Request parameter [aspectRatio] must be one of {', '.join(ASPECT_RATIOS)}")
        output_format = choice_input("outputFormat", raw.get("outputFormat") or "png", OUTPUT_FORMATS)

        seed_given = text_value(raw.get("seed")) != ""
        seed = integer_input("seed", raw.get("seed"), 0, SEED_MAX) if seed_given else secrets.randbelow(SEED_MAX + 1)
        tuning = self._tuning(raw)

        parameters = {item.id: raw[item.id] for item in self.inputs if item.id in raw and item.id != "inputImage"}
        if not seed_given:
            parameters["seed"] = str(seed)  # recorded, so the image can be made again
        # Image models without an aspect ratio take the input's: the caller sets the size once it has it.
        width, height = size_for_aspect_ratio(aspect_ratio or "1:1")
        order = WorkOrder(
            prompt=prompt, width=width, height=height, seed=seed, output_format=output_format,
            aspect_ratio=aspect_ratio, prompt_upsampling=upsampling == "true", safety_tolerance=safety, **tuning,
        )
        return ValidatedRun(order, parameters)

    def _tuning(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The extra inputs given (absent or empty: the model's configured value)."""
        given = {item.id for item in self.extra if text_value(raw.get(item.id)) != ""}
        tuning: dict[str, Any] = {}
        if "steps" in given:
            tuning["steps"] = integer_input("steps", raw["steps"], 1, STEPS_MAX)
        if "guidance" in given:
            tuning["guidance"] = number_input("guidance", raw["guidance"], 0, GUIDANCE_MAX)
        if "strength" in given:
            tuning["strength"] = number_input("strength", raw["strength"], 0.05, 1)
        return tuning
