"""The hosted protocol's tool inputs: what each tool takes at Run, as Tool/Detail publishes it,
and how a Run's inputs are read into a :class:`~fluxhost.orders.RunRequest`.

A tool's :class:`InputSchema` is, for a tool of the hosted FLUX family (:mod:`fluxhost.family`),
exactly the inputs its clients send; for any other, the seed tool's inputs
(``black-forest-labs/flux-pro-1.1`` on the hosted API, so a client written for that page works
unchanged against any model) plus the extra inputs its model exposes, such as steps and guidance.
Values arrive as strings or as JSON numbers and booleans; the official clients send ``0`` for a
number left unset, which means the tool's default wherever zero makes no sense. Every refusal is
an :class:`InputError` whose text is the protocol's message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Protocol

from fluxhost.orders import (
    ASPECT_RATIOS,
    CONTROL_DEFAULT,
    OUTPUT_FORMATS,
    SAFETY_MAX,
    SAFETY_MIN,
    SEED_MAX,
    Control,
    LoraRef,
    RunRequest,
    size_for_aspect_ratio,
)
from fluxhost.tools import DEFAULT_PROMPT, Tool
from fluxhost.wiro import messages

STEPS_MAX = 100
SAMPLES_MAX = 4
SIDE_MIN, SIDE_MAX, SIDE_MULTIPLE = 64, 2048, 16
UPSCALE_MAX = 4
MAX_LORAS = 8  # adapters one Run may add with fluxhost's ``loras`` input
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
    example: str = ""  # fluxhost's own: a value the serving model does well with (forms' placeholder)

    def item(self) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.id, "type": self.type, "label": self.label,
                                "description": self.description, "default": self.default, "required": self.required}
        if self.example:
            item["example"] = self.example
        if self.options:
            item["options"] = [dict(option) for option in self.options]
        if self.bounds:
            item.update(zip(("min", "max", "step"), (f"{bound:g}" for bound in self.bounds), strict=True))
        return item


def _options(values: Iterable[str], labels: dict[str, str] | None = None) -> tuple[dict[str, str], ...]:
    return tuple({"value": value, "label": (labels or {}).get(value, value)} for value in values)


def _aspect_ratio_options(megapixels: float = 1.0) -> tuple[dict[str, str], ...]:
    options = []
    for ratio in ASPECT_RATIOS:
        width, height = size_for_aspect_ratio(ratio, megapixels)
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


def _side_input(name: str) -> Input:
    return Input(name, "number", name.capitalize(),
                 f"Image {name} in pixels, {SIDE_MIN} to {SIDE_MAX}, rounded to a multiple of {SIDE_MULTIPLE}; 0 or "
                 "empty: 1024, or the input image's shape at about one megapixel.", "0")


def _family_input(name: str, tool: Tool) -> Input:
    """Input ``name`` of the hosted family's tool ``tool``, as its Tool/Detail shows it."""
    upscaler = tool.kind == "upscale"
    inputs = {
        "prompt": SEED_TOOL_INPUTS[0],
        "inputImageUrl": Input("inputImageUrl", "text", "Input Image URL",
                               "The input image by http(s) URL (e.g. one File/Upload returned); or send the file "
                               "itself as inputImage (multipart). PNG, JPEG or WebP.", "",
                               required=tool.takes_image),
        "inputImage2Url": Input("inputImage2Url", "text", "Input Image 2 URL", "The second input image, by URL.", "",
                                required=tool.takes_image),
        "inputImage3Url": Input("inputImage3Url", "text", "Input Image 3 URL", "The third input image, by URL.", "",
                                required=tool.takes_image),
        "width": _side_input("width"),
        "height": _side_input("height"),
        "samples": Input("samples", "number", "Samples",
                         f"How many images to make, 1 to {SAMPLES_MAX} (seed, seed+1...); 0 or empty: 1.", "1"),
        "scale": (Input("scale", "number", "Scale", f"The upscale factor, 1 to {UPSCALE_MAX}; 0 or empty: 2.", "2")
                  if upscaler else Input("scale", "number", "Guidance Scale",
                                         f"How closely the image follows the prompt, 0 to {GUIDANCE_MAX:g}; 0 or "
                                         f"empty: the tool's default ({tool.guidance:g}).", f"{tool.guidance:g}")),
        "guidance": Input("guidance", "number", "Guidance",
                          f"How closely the image follows the prompt, 0 to {GUIDANCE_MAX:g}; 0 or empty: the tool's "
                          f"default ({tool.guidance:g}).", f"{tool.guidance:g}"),
        "steps": Input("steps", "number", "Steps",
                       f"Denoising steps, 1 to {STEPS_MAX}; 0 or empty: the tool's default ({tool.steps}).",
                       str(tool.steps)),
        "strength": Input("strength", "number", "Strength",
                          "How far to move from the input image, 0.05 to 1 (1 ignores it); 0 or empty: the tool's "
                          f"default ({tool.strength:g}).", f"{tool.strength:g}"),
        "selectedModel": Input("selectedModel", "select", "Select Model",
                               "The base weights: empty, the ones this tool is served with.", "",
                               options=_options(("",))),
        "selectedModelPrivate": Input("selectedModelPrivate", "select", "Select Model Private",
                                      "Your own base weights: none can be added on this server yet; empty.", "",
                                      options=_options(("",))),
        "selectedLoraModel": Input("selectedLoraModel", "select", "Select Lora Model",
                                   "A LoRA adapter from this server's library (FLUXHOST_LORA_DIR); empty: none.", "",
                                   options=_options(("", *tool.loras))),
        "selectedLoraModelPrivate": Input("selectedLoraModelPrivate", "text", "Select Lora Model Private",
                                          "One of your own LoRA adapters: the id of a .safetensors file you "
                                          "uploaded (File/Upload) or trained; empty: none.", ""),
        "selectedLoraModelPrivateUrl": Input("selectedLoraModelPrivateUrl", "text", "LoRA Model URL",
                                             "A LoRA adapter (.safetensors: diffusers, kohya or XLabs keys) by "
                                             "http(s) URL; empty: none.", ""),
        "loras": Input("loras", "textarea", "LoRA adapters with weights",
                       f"fluxhost's own input: up to {MAX_LORAS} more adapters, each with its weight, as a JSON list "
                       'such as [{"model": "style", "scale": 0.8}, {"url": "https://.../a.safetensors", "scale": 0.5}] '
                       '("model": a library adapter, "private": your upload\'s id, "url": by URL; scale -4 to 4, '
                       "default 1).", ""),
        "controlnetConditioningScale": Input(
            "controlnetConditioningScale", "number", "ControlNet Conditioning Scale",
            "How strongly the input image holds the result, 0 to 2; 0 or empty: "
            f"{CONTROL_DEFAULT.conditioning_scale:g}.",
            f"{CONTROL_DEFAULT.conditioning_scale:g}"),
        "controlGuidanceStart": Input("controlGuidanceStart", "number", "Control Guidance Start",
                                      "Fraction of the steps after which the input image starts to guide, 0 to 1.",
                                      f"{CONTROL_DEFAULT.guidance_start:g}"),
        "controlGuidanceEnd": Input("controlGuidanceEnd", "number", "Control Guidance End",
                                    "Fraction of the steps after which the input image stops guiding, 0 to 1; 0 or "
                                    f"empty: {CONTROL_DEFAULT.guidance_end:g}.", f"{CONTROL_DEFAULT.guidance_end:g}"),
    }
    for item in SEED_TOOL_INPUTS[1:]:
        inputs[item.id] = _at_size(item, tool.megapixels)
    return inputs[name]


def _at_size(item: Input, megapixels: float) -> Input:
    """``item``, as a tool whose aspect ratios give ``megapixels`` publishes it."""
    if item.id != "aspectRatio" or megapixels == 1:
        return item
    return replace(item, options=_aspect_ratio_options(megapixels),
                   description=f"Aspect ratio of the image, at about {megapixels:g} megapixels; each option gives the "
                               "width and height in pixels it produces.")


class Published(Protocol):
    """What Tool/Detail shows of a tool's inputs (an :class:`InputSchema`, or a training tool's form)."""

    def items(self) -> list[dict[str, Any]]: ...


UPLOAD_INPUT = Input("inputImage", "fileinput", "Input Image",
                     "The input image as an uploaded file (multipart), instead of inputImageUrl.", "")


@dataclass(frozen=True)
class InputSchema:
    """The inputs one tool takes, as Tool/Detail publishes them (``published``) and Run reads them;
    ``notes`` (input id, text) add what this server does with an input to its description."""

    published: tuple[Input, ...]
    notes: tuple[tuple[str, str], ...] = ()
    takes_image: bool = False  # an input image is required (inputImage or inputImageUrl)
    max_prompt_chars: int = 10_000
    refuse_unknown: bool = False  # a Run sending an input the tool does not take is refused, not noted
    zero_is_default: bool = False  # a family tool: 0 for an unset number, as its clients send it
    upscaler: bool = False  # ``scale`` is the upscale factor, not the guidance
    unavailable: frozenset[str] = frozenset()
    """Inputs published as the hosted tool has them that this server refuses when asked for (prompt
    upsampling without an upsampler): their items say ``"available": false``, forms leave them out."""

    @classmethod
    def of(cls, tool: Tool, notes: dict[str, str], max_prompt_chars: int, refuse_unknown: bool = False,
           unavailable: frozenset[str] = frozenset()) -> InputSchema:
        if tool.inputs is None:
            published = cls._seed_form(tool)
        else:
            published = tuple(_family_input(name, tool) for name in tool.inputs)
            if tool.max_images:
                at = [item.id for item in published].index("inputImageUrl") + 1
                published = published[:at] + (UPLOAD_INPUT,) + published[at:]
        if tool.example_prompt:
            published = tuple(replace(item, example=tool.example_prompt) if item.id == "prompt" else item
                              for item in published)
        return cls(published, tuple(notes.items()), tool.takes_image, max_prompt_chars, refuse_unknown,
                   zero_is_default=tool.inputs is not None, upscaler=tool.kind == "upscale", unavailable=unavailable)

    @staticmethod
    def _seed_form(tool: Tool) -> tuple[Input, ...]:
        """The seed tool's inputs, the input image's after the prompt for an image tool, then the
        model's exposed tuning."""
        extra = [steps_input(tool.steps) if name == "steps" else guidance_input(tool.guidance) for name in tool.tuning]
        if tool.kind == "image-to-image":
            extra.append(strength_input(tool.strength))
        if not tool.takes_image:
            return tuple(_at_size(item, tool.megapixels) for item in SEED_TOOL_INPUTS) + tuple(extra)
        seed = tuple(replace(item, default="", description=ASPECT_OF_INPUT) if item.id == "aspectRatio" else item
                     for item in SEED_TOOL_INPUTS)
        return seed[:1] + IMAGE_INPUTS + seed[1:] + tuple(extra)

    @cached_property
    def inputs(self) -> tuple[Input, ...]:
        """The published inputs, each with this server's note on it; worked out once, since every
        Run reads them."""
        notes = dict(self.notes)
        return tuple(replace(item, description=f"{item.description} {notes[item.id]}") if item.id in notes else item
                     for item in self.published)

    @cached_property
    def ids(self) -> frozenset[str]:
        return frozenset(item.id for item in self.published)

    def items(self) -> list[dict[str, Any]]:
        """Tool/Detail's ``parameters`` items."""
        return [{**item.item(), "available": False} if item.id in self.unavailable else item.item()
                for item in self.inputs]

    def parse(self, raw: dict[str, Any], callback_url: str = "") -> RunRequest:
        """The Run a client's inputs ask for; :class:`InputError` for the first bad one."""
        ids = self.ids
        files = sorted(name for name in ids if name != "inputImage" and isinstance(raw.get(name), bytes))
        if files:
            raise InputError(messages.parameter(files[0], "must be text, not a file (only inputImage takes one)"))
        prompt = text_value(raw.get("prompt"))
        if "prompt" in ids and not prompt:
            raise InputError(messages.parameter("prompt", "required"))
        if len(prompt) > self.max_prompt_chars:
            raise InputError(messages.parameter("prompt", f"must be between 1 and {self.max_prompt_chars} characters"))

        def sent(name: str, default: Any) -> Any:
            """An input of this tool as sent (absent or empty: ``default``); inputs it does not take
            are not read."""
            value = raw.get(name) if name in ids else None
            return default if value in ("", None) else value

        upsampling = choice_input("promptUpsampling", sent("promptUpsampling", "false"), ("false", "true"))
        safety = integer_input("safetyTolerance", sent("safetyTolerance", "2"), SAFETY_MIN, SAFETY_MAX)
        images = self._images(raw)
        aspect_ratio = None
        if "aspectRatio" in ids:
            aspect_ratio = text_value(raw.get("aspectRatio")) or (None if self.takes_image else "16:9")
            if aspect_ratio is not None and aspect_ratio not in ASPECT_RATIOS:
                raise InputError(messages.one_of("aspectRatio", ASPECT_RATIOS))
        output_format = choice_input("outputFormat", sent("outputFormat", "png"), OUTPUT_FORMATS)
        seed = self._seed(sent("seed", ""))
        tuning = self._tuning(raw)
        ignored = self._unknown(raw)
        return RunRequest(
            prompt=prompt, aspect_ratio=aspect_ratio, size=self._size(raw, bool(images)), seed=seed,
            output_format=output_format,
            safety_tolerance=safety, prompt_upsampling=upsampling == "true",
            input_image=images[0] if images else None, more_images=tuple(images[1:]),
            callback_url=callback_url, ignored_inputs=ignored,
            parameters={item.id: raw[item.id] for item in self.inputs if item.id in raw and item.id != "inputImage"},
            image_parameter="inputImage" if "inputImage" in ids else None, **tuning,
        )

    def _images(self, raw: dict[str, Any]) -> list[bytes | str]:
        """The input images given, in order: ``inputImage`` (a file's bytes, or a URL), else
        ``inputImageUrl``; then ``inputImage2Url``, ``inputImage3Url``. The required ones must be
        there."""
        images: list[bytes | str] = []
        if "inputImage" not in self.ids:
            return images
        if raw.get("inputImage"):
            image = raw["inputImage"]
            images.append(image if isinstance(image, bytes) else str(image).strip())
        elif text_value(raw.get("inputImageUrl")):
            images.append(text_value(raw.get("inputImageUrl")))
        elif self.takes_image:
            raise InputError(messages.parameter("inputImage", "required"))
        for item in self.published:
            if item.id in ("inputImage2Url", "inputImage3Url"):
                url = text_value(raw.get(item.id))
                if not url and item.required:
                    raise InputError(messages.parameter(item.id, "required"))
                if url:
                    if not images:
                        raise InputError(messages.parameter("inputImageUrl", "required"))
                    images.append(url)
        return images

    @staticmethod
    def image_parameter(raw: dict[str, Any]) -> str:
        """The input that carried a Run's image, to name in a refusal of it."""
        return "inputImage" if raw.get("inputImage") else "inputImageUrl"

    def _unknown(self, raw: dict[str, Any]) -> tuple[str, ...]:
        """The names sent that are neither an input of this tool nor the callback URL, sorted; with
        :attr:`refuse_unknown`, the first refused instead."""
        known = self.ids | set(CALLBACK_URL_NAMES)
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

    def _given(self, raw: dict[str, Any], name: str) -> bool:
        """Whether ``name`` is an input of this tool with a value: empty, and for a family tool
        ``0``, leave the tool's default."""
        if name not in self.ids:
            return False
        text = text_value(raw.get(name))
        if text == "":
            return False
        return not (self.zero_is_default and _NUMBER.fullmatch(text) and float(text) == 0)

    def _size(self, raw: dict[str, Any], has_image: bool) -> tuple[int, int] | None:
        """``width`` and ``height`` asked for, each rounded to a multiple of 16 (one alone keeps the
        other at 1024); neither: 1024x1024, or with an input image None (its shape)."""
        if "width" not in self.ids:
            return None
        sides = {name: integer_input(name, raw[name], SIDE_MIN, SIDE_MAX)
                 for name in ("width", "height") if self._given(raw, name)}
        if not sides and has_image:
            return None
        return tuple(int(sides.get(name, 1024) / SIDE_MULTIPLE + 0.5) * SIDE_MULTIPLE  # halves up, as people round
                     for name in ("width", "height"))

    def _tuning(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The tuning inputs given (absent, empty or a family tool's 0: the model's configured value)."""
        tuning: dict[str, Any] = {}
        if self._given(raw, "steps"):
            tuning["steps"] = integer_input("steps", raw["steps"], 1, STEPS_MAX)
        if self._given(raw, "guidance"):
            tuning["guidance"] = number_input("guidance", raw["guidance"], 0, GUIDANCE_MAX)
        if self._given(raw, "scale"):
            if self.upscaler:
                tuning["upscale"] = number_input("scale", raw["scale"], 1, UPSCALE_MAX)
            else:
                tuning["guidance"] = number_input("scale", raw["scale"], 0, GUIDANCE_MAX)
        if self._given(raw, "strength"):
            tuning["strength"] = number_input("strength", raw["strength"], 0.05, 1)
        if self._given(raw, "samples"):
            tuning["num_images"] = integer_input("samples", raw["samples"], 1, SAMPLES_MAX)
        for name in ("selectedModel", "selectedModelPrivate"):
            if self._given(raw, name):
                raise InputError(messages.parameter(name, "must be empty: this server serves this tool with one "
                                                          "base model (see Tool/Detail)"))
        if self.upscaler:
            tuning["control"] = self._control(raw)
        loras = self._loras(raw)
        if loras:
            tuning["loras"] = loras
        return tuning

    def _loras(self, raw: dict[str, Any]) -> tuple[LoraRef, ...]:
        """The LoRA adapters asked for: one from the library, one of the project's own, one by URL
        (any of them, together)."""
        loras = []
        selector = next((item for item in self.published if item.id == "selectedLoraModel"), None)
        library = tuple(option["value"] for option in selector.options if option["value"]) if selector else ()
        if self._given(raw, "selectedLoraModel"):
            name = text_value(raw["selectedLoraModel"])
            if name not in library:
                raise InputError(messages.one_of("selectedLoraModel", library) if library else messages.parameter(
                    "selectedLoraModel", "names no adapter: this server has no LoRA library (FLUXHOST_LORA_DIR)"))
            loras.append(LoraRef(source="library", name=name))
        if self._given(raw, "selectedLoraModelPrivate"):
            loras.append(LoraRef(source="upload", name=text_value(raw["selectedLoraModelPrivate"])))
        if self._given(raw, "selectedLoraModelPrivateUrl"):
            loras.append(LoraRef(source="url", name=text_value(raw["selectedLoraModelPrivateUrl"])))
        if "loras" in self.ids and raw.get("loras") not in (None, "", []):
            loras.extend(self._weighted_loras(raw["loras"], library))
        return tuple(loras)

    @staticmethod
    def _weighted_loras(value: Any, library: tuple[str, ...]) -> list[LoraRef]:
        """fluxhost's ``loras`` input: a JSON list (or its text) of adapters, each one of
        ``{"model": a library name}``, ``{"private": an upload's id}`` or ``{"url": ...}``, with an
        optional ``"scale"`` (-4 to 4, default 1)."""
        refused = InputError(messages.parameter(
            "loras", 'must be a JSON list of {"model" | "private" | "url": ..., "scale": -4 to 4}'))
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
                raise refused from None
        if not isinstance(value, list) or len(value) > MAX_LORAS:
            raise refused
        loras = []
        for entry in value:
            named = {key: entry[key] for key in ("model", "private", "url") if isinstance(entry, dict) and key in entry}
            if len(named) != 1 or set(entry) - {*named, "scale"} or not isinstance(next(iter(named.values())), str):
                raise refused
            [(key, name)] = named.items()
            if key == "model" and name not in library:
                raise InputError(messages.one_of("loras", library) if library else messages.parameter(
                    "loras", "names no adapter: this server has no LoRA library (FLUXHOST_LORA_DIR)"))
            scale = number_input("loras", entry.get("scale", 1), -4, 4)
            loras.append(LoraRef(source={"model": "library", "private": "upload", "url": "url"}[key], name=name.strip(),
                                 weight=scale, listed=True))
        return loras

    def _control(self, raw: dict[str, Any]) -> Control:
        """The upscaler's ControlNet settings: 0 is a start, never a scale or an end."""
        def given(name: str, default: float, high: float) -> float:
            return number_input(name, raw[name], 0, high) if self._given(raw, name) else default

        start = (number_input("controlGuidanceStart", raw["controlGuidanceStart"], 0, 1)
                 if text_value(raw.get("controlGuidanceStart")) else CONTROL_DEFAULT.guidance_start)
        scale = given("controlnetConditioningScale", CONTROL_DEFAULT.conditioning_scale, 2)
        control = Control(conditioning_scale=scale, guidance_start=start,
                          guidance_end=given("controlGuidanceEnd", CONTROL_DEFAULT.guidance_end, 1))
        if control.guidance_end <= control.guidance_start:
            raise InputError(messages.parameter("controlGuidanceEnd", "must be larger than controlGuidanceStart"))
        return control
