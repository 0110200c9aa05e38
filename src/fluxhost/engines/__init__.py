"""Engines: what turns a generation request into images (diffusers FLUX, and the upscaler)."""

from __future__ import annotations

from fluxhost.engines.base import Engine, GenerationRequest, StepCallback

__all__ = ["Engine", "GenerationRequest", "StepCallback"]
