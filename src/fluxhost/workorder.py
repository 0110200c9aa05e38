"""The work order: what a worker needs to run one task, stored with the task and read back typed.

Written at Run (the task row's ``request`` column, as JSON) and decoded by whichever worker claims
the task, in this process or another: the codec is pydantic's, so an order written by one version
is checked field by field when read by another.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FileRef(BaseModel):
    """A file in the file store: an input image kept with its task."""

    model_config = ConfigDict(frozen=True)

    folder: str
    name: str
    content_type: str
    size: int


class WorkOrder(BaseModel):
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
    trace: dict[str, str] = Field(default_factory=dict, description="The Run's trace context (W3C traceparent) "
                                  "when OpenTelemetry is on: the worker's spans join the Run's trace.")

    def encode(self) -> dict[str, Any]:
        """The JSON-ready form stored with the task."""
        return self.model_dump(mode="json")

    @classmethod
    def decode(cls, stored: dict[str, Any]) -> WorkOrder:
        return cls.model_validate(stored)
