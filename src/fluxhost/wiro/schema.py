"""The hosted protocol's tool inputs: what each tool takes at Run, as Tool/Detail publishes it,
and how a Run's inputs are read into a :class:`~fluxhost.orders.RunRequest`.

A tool's :class:`InputSchema` is the seed tool's inputs (``black-forest-labs/flux-pro-1.1`` on the
hosted API, so a client written for that page works unchanged against any model) plus the extra
inputs its model exposes, such as steps and guidance. Values arrive as strings or as JSON numbers
and booleans; every refusal is an :class:`InputError` whose text is the protocol's message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from fluxhost.orders import (
    ASPECT_RATIOS,
    OUTPUT_FORMATS,
    SAFETY_MAX,
    SAFETY_MIN,
    SEED_MAX,
    RunRequest,
    size_for_aspect_ratio,
)
from fluxhost.tools import DEFAULT_PROMPT, Tool
from fluxhost.wiro import messages

STEPS_MAX = 100
CALLBACK_URL_NAMES = ("callbackUrl", "callbackurl")  # what a Run's body carries besides the tool's inputs
GUIDANCE_MAX = 50.0

_INTEGER = re.compile(r"[+-]?[0-9]+")
MAX_INTEGER_CHARS = 40  # past any bound here (and Python parses no more than 4,300 digits)
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)")


class InputError(ValueError):
    """An input the tool refuses; ``str(error)`` is the protocol message shown to the caller."""


def text_value(value: Any) -> str:
    """An input as text, the way the hosted API reads form values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (str, int, float)):
        return str(value).strip()
    raise InputError(messages.INVALID)


def integer_input(name: str, value: Any, low: int, high: int) -> int:
    """``value`` (an integer, or its text) within ``low``..``high``, or the protocol's message."""
    message = messages.between(name, low, high)
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
        raise InputError(messages.number(name))
    text = text_value(value)
    if not _NUMBER.fullmatch(text):
        raise InputError(messages.number(name))
    number = float(text)
    if not low <= number <= high:
        raise InputError(messages.between(name, float(low), float(high)))
    return number


def choice_input(name: str, value: Any, options: Iterable[str]) -> str:
    options = tuple(options)
    text = text_value(value).lower()
    if text not in options:
        raise InputError(messages.one_of(name, options))
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
class InputSchema:
    """The inputs one tool takes: the seed tool's, plus ``extra`` (e.g. steps and guidance);
    ``notes`` (input id, text) add what this server does with an input to its description."""

    extra: tuple[Input, ...] = field(default_factory=tuple)
    notes: tuple[tuple[str, str], ...] = ()
    takes_image: bool = False  # edit and image-to-image tools: inputImage or inputImageUrl is required
    max_prompt_chars: int = 10_000
    refuse_unknown: bool = False  # a Run sending an input the tool does not take is refused, not noted

    @classmethod
    def of(cls, tool: Tool, notes: dict[str, str], max_prompt_chars: int, refuse_unknown: bool = False) -> InputSchema:
        extra = [steps_input(tool.steps) if name == "steps" else guidance_input(tool.guidance) for name in tool.tuning]
        if tool.kind == "image-to-image":
            extra.append(strength_input(tool.strength))
        return cls(tuple(extra), tuple(notes.items()), tool.takes_image, max_prompt_chars, refuse_unknown)

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

    def parse(self, raw: dict[str, Any], callback_url: str = "") -> RunRequest:
        """The Run a client's inputs ask for; :class:`InputError` for the first bad one."""
        prompt = text_value(raw.get("prompt"))
        if not prompt:
            raise InputError(messages.parameter("prompt", "required"))
        if len(prompt) > self.max_prompt_chars:
            raise InputError(messages.parameter("prompt", f"must be between 1 and {self.max_prompt_chars} characters"))

        upsampling = choice_input("promptUpsampling", raw.get("promptUpsampling", "false"), ("false", "true"))
        safety = raw.get("safetyTolerance", "2")
        safety = integer_input("safetyTolerance", "2" if safety in ("", None) else safety, SAFETY_MIN, SAFETY_MAX)
        if self.takes_image and not (raw.get("inputImage") or text_value(raw.get("inputImageUrl"))):
            raise InputError(messages.parameter("inputImage", "required"))
        aspect_ratio = text_value(raw.get("aspectRatio")) or (None if self.takes_image else "16:9")
        if aspect_ratio is not None and aspect_ratio not in ASPECT_RATIOS:
            raise InputError(messages.one_of("aspectRatio", ASPECT_RATIOS))
        output_format = choice_input("outputFormat", raw.get("outputFormat") or "png", OUTPUT_FORMATS)
        seed = self._seed(raw.get("seed"))
        tuning = self._tuning(raw)
        ignored = self._unknown(raw)
        return RunRequest(
            prompt=prompt, aspect_ratio=aspect_ratio, seed=seed, output_format=output_format,
            safety_tolerance=safety, prompt_upsampling=upsampling == "true",
            input_image=self._image(raw),
            callback_url=callback_url, ignored_inputs=ignored,
            parameters={item.id: raw[item.id] for item in self.inputs if item.id in raw and item.id != "inputImage"},
            image_parameter="inputImage", **tuning,
        )

    def _image(self, raw: dict[str, Any]) -> bytes | str | None:
        """The input image of an image tool: ``inputImage`` (a file's bytes, or a URL), else
        ``inputImageUrl``."""
        if not self.takes_image:
            return None
        if raw.get("inputImage"):
            image = raw["inputImage"]
            return image if isinstance(image, bytes) else str(image).strip()
        return text_value(raw.get("inputImageUrl"))

    @staticmethod
    def image_parameter(raw: dict[str, Any]) -> str:
        """The input that carried a Run's image, to name in a refusal of it."""
        return "inputImage" if raw.get("inputImage") else "inputImageUrl"

    def _unknown(self, raw: dict[str, Any]) -> tuple[str, ...]:
        """The names sent that are neither an input of this tool nor the callback URL, sorted; with
        :attr:`refuse_unknown`, the first refused instead."""
        known = {item.id for item in self.inputs} | set(CALLBACK_URL_NAMES)
        unknown = tuple(sorted(name for name in raw if name not in known))
        if unknown and self.refuse_unknown:
            raise InputError(messages.parameter(unknown[0], "is not an input of this tool (see Tool/Detail)"))
        return unknown

    @staticmethod
    def _seed(value: Any) -> int | None:
        """The seed asked for, None when empty; text that is no number gets the hosted API's
        "must be integer or float", a number that is no seed "must be between"."""
        text = text_value(value)
        if text == "":
            return None
        if not _NUMBER.fullmatch(text):
            raise InputError(messages.number("seed"))
        return integer_input("seed", value, 0, SEED_MAX)

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
