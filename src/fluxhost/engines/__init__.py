"""Engines and how each model slug gets one."""

from __future__ import annotations

from fluxhost.engines.base import Engine, GenerationRequest, StepCallback
from fluxhost.settings import ModelSettings, Settings

__all__ = ["Engine", "GenerationRequest", "StepCallback", "build_engine"]


def build_engine(model: ModelSettings, settings: Settings, device: str = "auto") -> Engine:
    """The engine serving ``model`` on ``device`` (where the model names none): the bench engine
    when asked for, else diffusers FLUX on the configured weights, or on the demo model's."""
    if settings.engine == "bench":
        from fluxhost.engines.bench import BenchEngine

        return BenchEngine(settings.bench_step_ms / 1000)
    from fluxhost.demo import DEMO_LABEL, or_demo, serves_demo
    from fluxhost.engines.flux import FluxEngine

    served = or_demo(model)
    return FluxEngine(served.weights, served, device=device, label=DEMO_LABEL if serves_demo(served) else None)
