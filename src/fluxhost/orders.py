"""What a Run asks for, in two forms: the :class:`RunRequest` a door hands to the operations, and
the :class:`WorkOrder` stored with the task for whichever worker claims it.

A door maps its own body (the hosted protocol's string-typed inputs, BFL's JSON, OpenAI's fields)
to a :class:`RunRequest`: typed, in no door's words. The operations check it and turn it into the
work order, with the defaults filled in and the input image kept in the file store. The work
order's codec is pydantic's, so an order written by one version is checked field by field when
read by another, in this process or another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ASPECT_RATIOS = (
    "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "4:5", "5:4", "21:9", "9:21", "2:1", "1:2"
)  # fmt: skip
OUTPUT_FORMATS = ("jpeg", "png")
SEED_MAX = 2**32 - 1
SAFETY_MIN, SAFETY_MAX = 0, 6
TARGET_PIXELS = 1024 * 1024
SIZE_MULTIPLE = 32


def size_for_aspect_ratio(aspect_ratio: str) -> tuple[int, int]:
    """Width and height of about one megapixel for ``"W:H"``, each a multiple of 32."""
    w, h = (int(part) for part in aspect_ratio.split(":"))
    ratio = w / h
    width = round(math.sqrt(TARGET_PIXELS * ratio) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    height = round(math.sqrt(TARGET_PIXELS / ratio) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    return width, height


@dataclass(frozen=True)
class RunRequest:
    """A Run as a door asks for it. Absent values (None) take the tool's defaults."""

    prompt: str
    aspect_ratio: str | None = None  # one of ASPECT_RATIOS; with ``size`` None and no input image: 16:9
    size: tuple[int, int] | None = None  # pixels, for doors whose clients ask for them (checked there)
    seed: int | None = None  # None: a random one, recorded with the task
    output_format: Literal["png", "jpeg"] = "png"
    safety_tolerance: int = 2
    prompt_upsampling: bool = False
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None  # image-to-image only
    num_images: int = 1
    input_image: bytes | str | None = None  # the file's bytes, or a URL (one this server handed out, or fetched)
    callback_url: str = ""
    ignored_inputs: tuple[str, ...] = ()  # inputs sent that the tool does not take: named in the task's log
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """The inputs as the client sent them, in its door's names: recorded with the task and shown
    back (a random seed is added as ``seed``)."""
    image_parameter: str | None = None
    """Where :attr:`parameters` records the URL of the kept input image, unless the client gave
    one there (None: nowhere)."""


class FileRef(BaseModel):
    """A file in the file store: an input image kept with its task."""

    model_config = ConfigDict(frozen=True)

    folder: str
    name: str
    content_type: str
    size: int


class WorkOrder(BaseModel):
    """What a worker needs to run one task, stored with it (the task's ``work_order`` column)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    prompt: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    seed: int = Field(ge=0)
    output_format: Literal["png", "jpeg"]
    aspect_ratio: str
    prompt_upsampling: bool = False
    safety_tolerance: int = 2
    steps: int | None = Field(default=None, ge=1, description="None: the model's configured steps.")
    guidance: float | None = Field(default=None, ge=0, description="None: the model's configured guidance.")
    num_images: int = Field(default=1, ge=1)
    input_images: tuple[FileRef, ...] = ()
    strength: float | None = Field(default=None, gt=0, le=1, description="image-to-image only.")
    ignored_inputs: tuple[str, ...] = Field(default=(), description="Inputs the client sent that the tool does "
                                            "not take: the worker names them in the task's log.")
    trace: dict[str, str] = Field(default_factory=dict, description="The Run's trace context (W3C traceparent) "
                                  "when OpenTelemetry is on: the worker's spans join the Run's trace.")

    def encode(self) -> dict[str, Any]:
        """The JSON-ready form stored with the task."""
        return self.model_dump(mode="json")

    @classmethod
    def decode(cls, stored: dict[str, Any]) -> WorkOrder:
        return cls.model_validate(stored)
