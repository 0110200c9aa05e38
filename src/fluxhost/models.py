"""The models a server serves, resolved from its settings: the models table, the presets, what
stands behind the seed's slug, and the demo model wherever no weights are named. The composition
roots (the API's service, the worker processes, the command line) call :func:`served_models`.

Presets are open FLUX models by short name, so that real weights are one setting away:
``FLUXHOST_PRESETS=schnell,dev`` serves presets under their own slugs and every slug of the hosted
family they stand in for (:mod:`fluxhost.family`), all from one loaded copy of the weights;
``FLUXHOST_FLUX_PRO_MODEL=schnell`` puts one behind the seed's ``black-forest-labs/flux-pro-1.1``;
``fluxhost models pull schnell`` downloads its weights into the Hugging Face cache first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fluxhost import DEFAULT_MODEL
from fluxhost.demo import or_demo, serves_demo
from fluxhost.engines.base import KindUnsupported, WeightsUnavailable
from fluxhost.family import BY_SLUG, MEMBERS, Member, OpenFamily
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
    family: OpenFamily | None = None  # the hosted tools it serves (the seed's slug aside: FLUXHOST_FLUX_PRO_MODEL)

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(member for member in MEMBERS if member.family == self.family and member.slug != DEFAULT_MODEL)

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
               download_gb=34, licence="Apache-2.0", family="schnell"),
        Preset("dev", "black-forest-labs/flux-1-dev", "black-forest-labs/FLUX.1-dev", "FLUX.1 [dev]",
               steps=28, guidance=3.5, max_sequence_length=512, exposed_inputs=("steps", "guidance"),
               description="FLUX.1 [dev]: guidance-distilled text-to-image with top prompt following and detail.",
               download_gb=34, licence="FLUX.1 [dev] Non-Commercial (accept it on the hub, then set HF_TOKEN)",
               family="dev"),
        Preset("klein", "black-forest-labs/flux-2-klein", "black-forest-labs/FLUX.2-klein-4B", "FLUX.2 [klein] 4B",
               steps=4, guidance=1.0, max_sequence_length=512, exposed_inputs=("steps",),
               description="FLUX.2 [klein]: a compact 4B FLUX.2 model, 4 steps, fits consumer GPUs.",
               download_gb=16, licence="Apache-2.0", family="flux2"),
        Preset("flux2", "black-forest-labs/flux-2-dev", "black-forest-labs/FLUX.2-dev", "FLUX.2 [dev]",
               steps=28, guidance=4.0, max_sequence_length=512, exposed_inputs=("steps", "guidance"),
               description="FLUX.2 [dev]: 32B open-weights FLUX.2, text-to-image and editing with reference images.",
               download_gb=106, licence="FLUX [dev] Non-Commercial (accept it on the hub, then set HF_TOKEN)",
               family="flux2"),
        Preset("kontext", "black-forest-labs/flux-kontext-pro", "black-forest-labs/FLUX.1-Kontext-dev",
               "FLUX.1 Kontext [dev]", steps=28, guidance=2.5, max_sequence_length=512, exposed_inputs=("steps",),
               description="FLUX.1 Kontext: text-based image editing, transforming images through natural language.",
               download_gb=34, licence="FLUX.1 [dev] Non-Commercial (accept it on the hub, then set HF_TOKEN)",
               extra={"kind": "edit"}, family="kontext"),
        Preset("srpo", "tencent/flux-srpo", "black-forest-labs/FLUX.1-dev", "FLUX.1 [dev] with SRPO",
               steps=50, guidance=3.5, max_sequence_length=512, exposed_inputs=("steps", "guidance"),
               description="FLUX.1 [dev] with Tencent's SRPO transformer: fine-tuned for realism and aesthetics.",
               download_gb=58, licence="FLUX.1 [dev] Non-Commercial (accept it on the hub, then set HF_TOKEN)",
               extra={"transformer": "tencent/SRPO/diffusion_pytorch_model.safetensors"}, family="srpo"),
        Preset("upscaler", "jasperai/flux-upscaler", "black-forest-labs/FLUX.1-dev", "FLUX.1 [dev] ControlNet upscaler",
               steps=28, guidance=3.5, max_sequence_length=512, exposed_inputs=(),
               description="Upscales an image, redrawing fine detail: jasperai's ControlNet on FLUX.1 [dev].",
               download_gb=37, licence="FLUX.1 [dev] Non-Commercial (accept it on the hub, then set HF_TOKEN)",
               extra={"kind": "upscale", "controlnet": "jasperai/Flux.1-dev-Controlnet-Upscaler"}, family="upscaler"),
    )
}


def preset_names(text: str) -> list[str]:
    """The preset names in a comma-separated setting; ValueError naming an unknown one."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        raise ValueError(f"unknown preset {unknown[0]!r} in FLUXHOST_PRESETS: choose from {', '.join(PRESETS)}")
    return names


def _weights(value: str, setting: str) -> str:
    """``value`` when it can name weights: a folder here, or a hub id (``owner/name``); a folder
    elsewhere (a fleet's API process reads the table its GPU workers load from) has a slash too.
    ValueError for a bare word that is neither (a misspelt preset)."""
    if "/" in value or Path(value).exists():
        return value
    raise ValueError(f"{setting}={value!r} is not a preset ({', '.join(PRESETS)}), a folder here or a Hugging Face "
                     "hub id (owner/name)")


def served_models(settings: Settings) -> dict[str, ModelSettings]:
    """Every slug served: the models table (unset: the seed's slug with default settings, and the
    whole hosted family), plus each preset under its slugs and its family's, plus what serves the
    seed's slug; the demo model where no weights are named. ValueError naming an unknown preset."""
    table_given = "models" in settings.model_fields_set
    models = dict(settings.models) if table_given else {DEFAULT_MODEL: ModelSettings()}
    for name in preset_names(settings.presets):
        preset = PRESETS[name]
        models.setdefault(preset.slug, preset.model_settings("FLUXHOST_PRESETS"))
        for member in preset.members:
            models.setdefault(member.slug, family_settings(member, preset.model_settings("FLUXHOST_PRESETS")))
    if not table_given:
        for member in MEMBERS:
            models.setdefault(member.slug, family_settings(member, ModelSettings(setting="FLUXHOST_PRESETS")))
    chosen = (settings.flux_pro_model or "").strip()
    if chosen:
        seed = models.get(DEFAULT_MODEL, ModelSettings())
        setting = "FLUXHOST_FLUX_PRO_MODEL"
        if chosen.lower() in PRESETS:
            # The seed tool keeps its own page and inputs; the preset brings weights and defaults.
            models[DEFAULT_MODEL] = PRESETS[chosen.lower()].model_settings(
                setting, exposed_inputs=seed.exposed_inputs, description=seed.description)
        else:
            models[DEFAULT_MODEL] = seed.model_copy(update={"weights": _weights(chosen, setting), "setting": setting})
    for slug, model in models.items():
        if model.weights:
            _weights(model.weights, f"FLUXHOST_MODELS[{slug!r}].weights")
    return {slug: or_demo(_of_its_kind(slug, model)) for slug, model in models.items()}


def _of_its_kind(slug: str, model: ModelSettings) -> ModelSettings:
    """A family tool's model serves the tool's kind, however it was configured."""
    known = BY_SLUG.get(slug)
    return model if known is None or model.kind == known.kind else model.model_copy(update={"kind": known.kind})


def family_settings(member: Member, model: ModelSettings) -> ModelSettings:
    """``model`` serving the family tool ``member``, with its description (its kind is set for
    every family slug by :func:`_of_its_kind`)."""
    update: dict[str, object] = {"description": member.description}
    if member.megapixels > 1 and model.weights and not model.render_pixels:
        update["render_pixels"] = 1024 * 1024  # drawn at the size the weights know, then upscaled
    return model.model_copy(update=update)


def load_failure(model: ModelSettings, error: Exception) -> str:
    """Why ``model`` could not be loaded, and what its operator can do: pull a preset's weights, or
    point the setting the model came from at others (a preset list takes names, not folders)."""
    if isinstance(error, KindUnsupported):
        serving = {"edit": "FLUX.1 Kontext or FLUX.2 weights (FLUXHOST_PRESETS=kontext)",
                   "image-to-image": "FLUX.1 weights (FLUXHOST_PRESETS=dev)",
                   "upscale": "the FLUX upscaler (FLUXHOST_PRESETS=upscaler)"}.get(model.kind, "FLUX weights")
        what = "the demo model" if serves_demo(model) else f"the weights {model.weights!r}"
        return (f"{what} cannot serve kind={model.kind} ({error}): set {model.setting} to serve it with "
                f"{serving}")
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
