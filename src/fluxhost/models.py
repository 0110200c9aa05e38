"""The models a server serves, resolved from its settings: the models table, the presets, what
stands behind the seed's slug, and the demo model wherever no weights are named. The composition
roots (the API's service, the worker processes, the command line) call :func:`served_models`.

Presets are open FLUX models by short name, so that real weights are one setting away:
``FLUXHOST_PRESETS=schnell,dev`` serves presets under their own slugs;
``FLUXHOST_FLUX_PRO_MODEL=schnell`` puts one behind the seed's ``black-forest-labs/flux-pro-1.1``;
``fluxhost models pull schnell`` downloads its weights into the Hugging Face cache first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fluxhost import DEFAULT_MODEL
from fluxhost.demo import or_demo
from fluxhost.engines.base import KindUnsupported, WeightsUnavailable
from fluxhost.settings import ModelSettings, Settings


@dataclass(frozen=True)
class Preset:
    name: str
    slug: str
    weights: str  # the Hugging Face hub id of its diffusers folder
    title: str
    steps: int
    guidance: float
    max_sequence_length: int
    exposed_inputs: tuple[str, ...]
    description: str
    download_gb: int
    licence: str
    extra: dict[str, object] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()  # more slugs served by the same model (and the same loaded engine)

    @property
    def slugs(self) -> tuple[str, ...]:
        return (self.slug, *self.aliases)

    def model_settings(self, setting: str, **overrides: object) -> ModelSettings:
        values = dict(weights=self.weights, steps=self.steps, guidance=self.guidance,
                      max_sequence_length=self.max_sequence_length, exposed_inputs=list(self.exposed_inputs),
                      description=self.description, setting=setting, **self.extra)
        return ModelSettings(**{**values, **overrides})


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("schnell", "black-forest-labs/flux-1-schnell", "black-forest-labs/FLUX.1-schnell", "FLUX.1 [schnell]",
               steps=4, guidance=0.0, max_sequence_length=256, exposed_inputs=("steps",),
               description="FLUX.1 [schnell]: fast text-to-image in 4 steps, distilled from FLUX.1 [pro].",
               download_gb=34, licence="Apache-2.0"),
        Preset("dev", "black-forest-labs/flux-1-dev", "black-forest-labs/FLUX.1-dev", "FLUX.1 [dev]",
               steps=28, guidance=3.5, max_sequence_length=512, exposed_inputs=("steps", "guidance"),
               description="FLUX.1 [dev]: guidance-distilled text-to-image with top prompt following and detail.",
               download_gb=34, licence="FLUX.1 [dev] Non-Commercial (accept it on the hub, then set HF_TOKEN)"),
        Preset("klein", "black-forest-labs/flux-2-klein", "black-forest-labs/FLUX.2-klein-4B", "FLUX.2 [klein] 4B",
               steps=4, guidance=1.0, max_sequence_length=512, exposed_inputs=("steps",),
               description="FLUX.2 [klein]: a compact 4B FLUX.2 model, 4 steps, fits consumer GPUs.",
               download_gb=16, licence="Apache-2.0"),
        Preset("kontext", "black-forest-labs/flux-kontext-pro", "black-forest-labs/FLUX.1-Kontext-dev",
               "FLUX.1 Kontext [dev]", steps=28, guidance=2.5, max_sequence_length=512, exposed_inputs=("steps",),
               description="FLUX.1 Kontext: text-based image editing, transforming images through natural language.",
               download_gb=34, licence="FLUX.1 [dev] Non-Commercial (accept it on the hub, then set HF_TOKEN)",
               extra={"kind": "edit"}, aliases=("black-forest-labs/flux-kontext-max",)),
    )
}


def preset_names(text: str) -> list[str]:
    """The preset names in a comma-separated setting; ValueError naming an unknown one."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        raise ValueError(f"unknown preset {unknown[0]!r} in FLUXHOST_PRESETS: choose from {', '.join(PRESETS)}")
    return names


def served_models(settings: Settings) -> dict[str, ModelSettings]:
    """Every slug served: the models table (unset: the seed's slug with default settings), plus each
    preset under its slug, plus what serves the seed's slug; the demo model where no weights are
    named. ValueError naming an unknown preset."""
    models = dict(settings.models) if "models" in settings.model_fields_set else {DEFAULT_MODEL: ModelSettings()}
    for name in preset_names(settings.presets):
        preset = PRESETS[name]
        for slug in preset.slugs:
            models.setdefault(slug, preset.model_settings("FLUXHOST_PRESETS"))
    chosen = (settings.flux_pro_model or "").strip()
    if chosen:
        seed = models.get(DEFAULT_MODEL, ModelSettings())
        setting = "FLUXHOST_FLUX_PRO_MODEL"
        if chosen.lower() in PRESETS:
            # The seed tool keeps its own page and inputs; the preset brings weights and defaults.
            models[DEFAULT_MODEL] = PRESETS[chosen.lower()].model_settings(
                setting, exposed_inputs=seed.exposed_inputs, description=seed.description)
        else:
            models[DEFAULT_MODEL] = seed.model_copy(update={"weights": chosen, "setting": setting})
    return {slug: or_demo(model) for slug, model in models.items()}


def load_failure(model: ModelSettings, error: Exception) -> str:
    """Why ``model`` could not be loaded, and what its operator can do: pull a preset's weights, or
    point the setting the model came from at others (a preset list takes names, not folders)."""
    if isinstance(error, KindUnsupported):
        return f"{error}: set {model.setting} to FLUX.1 Kontext or FLUX.2 [klein] weights for kind=edit"
    if not isinstance(error, WeightsUnavailable):
        return str(error) or type(error).__name__
    pulls = [name for name, preset in PRESETS.items() if preset.weights == error.weights]
    if model.setting == "FLUXHOST_PRESETS":
        remedy = (f"Download them first: fluxhost models pull {pulls[0]}, or take {pulls[0]!r} out of "
                  "FLUXHOST_PRESETS") if pulls else "Take it out of FLUXHOST_PRESETS"
    else:
        hint = f", or download them first: fluxhost models pull {pulls[0]}" if pulls else ""
        remedy = f"Set {model.setting} to a diffusers FLUX folder or Hugging Face hub id{hint}"
    return f"{error}. {remedy}."
