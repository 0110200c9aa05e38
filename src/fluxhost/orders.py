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


def size_for_aspect_ratio(aspect_ratio: str, megapixels: float = 1.0) -> tuple[int, int]:
    """Width and height of about ``megapixels`` (of 1024x1024 pixels) for ``"W:H"``, each a multiple of 32."""
    w, h = (int(part) for part in aspect_ratio.split(":"))
    ratio, pixels = w / h, TARGET_PIXELS * megapixels
    width = round(math.sqrt(pixels * ratio) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    height = round(math.sqrt(pixels / ratio) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    return width, height


class Control(BaseModel):
    """How a ControlNet holds an upscale to its input image (the upscaler tool)."""

    model_config = ConfigDict(frozen=True)

    conditioning_scale: float = Field(ge=0, le=2)
    guidance_start: float = Field(ge=0, le=1)
    guidance_end: float = Field(ge=0, le=1)


CONTROL_DEFAULT = Control(conditioning_scale=0.6, guidance_start=0.0, guidance_end=1.0)


class FileRef(BaseModel):
    """A file in the file store: an input image (or adapter) kept with its task."""

    model_config = ConfigDict(frozen=True)

    folder: str
    name: str
    content_type: str
    size: int


class LoraRef(BaseModel):
    """A LoRA adapter a task applies: from the server's library (by name), one of the project's
    uploads (by id; ``file`` once found) or a URL (fetched by the worker through the SSRF guard)."""

    model_config = ConfigDict(frozen=True)

    source: Literal["library", "upload", "url"]
    name: str
    file: FileRef | None = None
    weight: float = Field(default=1.0, ge=-4, le=4)
    # Given in fluxhost's own ``loras`` list, not by one of the hosted API's single inputs: what a
    # refusal of it names. Not part of the task's order.
    listed: bool = Field(default=False, exclude=True)


class TrainingImage(BaseModel):
    """One picture of a training set, with its caption (empty: the trigger word alone)."""

    model_config = ConfigDict(frozen=True)

    file: FileRef
    caption: str = ""


class Training(BaseModel):
    """How a LoRA adapter is trained: the hosted training tools' settings, checked.

    ``steps`` count optimizer steps; ``save_every``/``sample_every`` are in those steps (0: never
    sampled before the end); ``resume`` is the checkpoint folder of an earlier run of the same
    training (a killed task's) to go on from."""

    model_config = ConfigDict(frozen=True)

    images: tuple[TrainingImage, ...] = ()  # named once the Run is accepted (an archive's pictures kept then)
    trigger_word: str = ""
    name: str = ""
    description: str = ""
    steps: int = Field(ge=1)
    learning_rate: float = Field(gt=0, le=1)
    rank: int = Field(ge=1, le=256)
    batch_size: int = Field(ge=1, le=64)
    resolution: int = Field(ge=64, le=2048)
    gradient_accumulation: int = Field(default=1, ge=1, le=64)
    gradient_checkpointing: bool = False
    caption_dropout: float = Field(default=0.05, ge=0, le=1)
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = "adamw"
    save_every: int = Field(ge=0)
    keep_checkpoints: int = Field(ge=1, le=100)
    sample_every: int = Field(ge=0)
    sample_prompts: tuple[str, ...] = ()
    guidance: float = Field(default=1.0, ge=0)
    checkpoints_folder: str
    """Where this training keeps its checkpoints in the file store: named at Run, so the run after a
    lost worker finds what the one before wrote."""
    resume: str | None = None
    pictures_folder: str = ""  # where the pictures of a ZIP archive were kept for this training
    project_id: int
    key_id: int | None = None


@dataclass(frozen=True)
class TrainingRequest:
    """A training tool's Run as a door reads it, before its training set is found: the pictures
    are a folder of the project's uploads (``folder``, an id) or a ZIP archive (``archive``: its
    bytes or URL); ``resume_task`` names an ended training of the project to go on from."""

    steps: int
    learning_rate: float
    rank: int
    batch_size: int
    resolution: int
    save_every: int
    keep_checkpoints: int
    sample_every: int
    folder: str = ""
    archive: bytes | str | None = None
    trigger_word: str = ""
    name: str = ""
    description: str = ""
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    caption_dropout: float = 0.05
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = "adamw"
    sample_prompts: tuple[str, ...] = ()
    guidance: float = 1.0
    caption_prefix: str = ""
    caption_suffix: str = ""
    resume_task: int | None = None


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
    more_images: tuple[bytes | str, ...] = ()  # the second and third input images of a multi-image tool
    upscale: float | None = None  # an upscale tool's factor (None: 2)
    control: Control | None = None  # an upscale tool's ControlNet settings
    loras: tuple[LoraRef, ...] = ()  # LoRA adapters to apply, each with its weight
    training: TrainingRequest | None = None  # a training tool's settings
    callback_url: str = ""
    ignored_inputs: tuple[str, ...] = ()  # inputs sent that the tool does not take: named in the task's log
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """The inputs as the client sent them, in its door's names: recorded with the task and shown
    back (a random seed is added as ``seed``)."""
    image_parameter: str | None = None
    """Where :attr:`parameters` records the URL of the kept input image, unless the client gave
    one there (None: nowhere)."""


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
    control: Control | None = Field(default=None, description="An upscale's ControlNet settings.")
    loras: tuple[LoraRef, ...] = Field(default=(), description="LoRA adapters, each with its weight.")
    training: Training | None = Field(default=None, description="A training tool's run: what it trains on, how.")
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
