"""Engines and how each model slug gets one."""

from __future__ import annotations

from fluxhost.engines.base import Engine, GenerationRequest, StepCallback
from fluxhost.settings import ModelSettings, Settings

TINY_LABEL = "tiny random-weight FLUX pipeline (draws noise: configure real weights for images)"

__all__ = ["Engine", "GenerationRequest", "StepCallback", "build_engine"]


def build_engine(model: ModelSettings, settings: Settings, device: str = "auto") -> Engine:
    """The engine serving ``model`` on ``device`` (where the model names none): the bench engine
    when asked for, else diffusers FLUX on the configured weights, else on the tiny pipeline
    (built on first use)."""
    if settings.engine == "bench":
        from fluxhost.engines.bench import BenchEngine

        return BenchEngine(settings.bench_step_ms / 1000)
    from fluxhost.engines.flux import FluxEngine

    if model.weights:
        return FluxEngine(model.weights, model, device=device)
    from fluxhost.engines.tiny import ensure_tiny_pipeline

    folder = ensure_tiny_pipeline(settings.tiny_model_dir)
    return FluxEngine(str(folder), model, device=device, label=TINY_LABEL)
