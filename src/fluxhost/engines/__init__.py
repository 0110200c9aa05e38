"""Engines and how each model slug gets one."""

from __future__ import annotations

from fluxhost.engines.base import Engine, GenerationRequest, StepCallback
from fluxhost.settings import ModelSettings, Settings

__all__ = ["Engine", "GenerationRequest", "StepCallback", "build_engine"]


def build_engine(model: ModelSettings, settings: Settings, device: str = "auto") -> Engine:
    """The engine serving ``model`` (as :attr:`Settings.served_models` gives it: its weights set, the
    demo model's where none were configured) on ``device`` (where the model names none): the bench
    engine when asked for, else diffusers FLUX."""
    if settings.engine == "bench":
        from fluxhost.engines.bench import BenchEngine

        return BenchEngine(settings.bench_step_ms / 1000)
    from fluxhost.demo import DEMO_LABEL, serves_demo
    from fluxhost.engines.flux import FluxEngine

    return FluxEngine(model.weights, model, device=device, label=DEMO_LABEL if serves_demo(model) else None)
