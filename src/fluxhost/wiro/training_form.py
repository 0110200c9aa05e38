"""The training tools' inputs (``wiro/train-flux-lora`` and ``-portrait``), as Tool/Detail
publishes them and Run reads them into a :class:`~fluxhost.orders.TrainingRequest`.

Named and valued as the official clients send them (ai-toolkit's settings, which the hosted tool
exposes): numbers as numbers or text, ``0`` for a number left unset (the tool's default), switches
as ``"true"``/``"false"``, sample prompts one per line with ``[trigger]`` for the trigger word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fluxhost.family import RESUME_INPUT
from fluxhost.orders import SEED_MAX, RunRequest, TrainingRequest
from fluxhost.tools import Tool
from fluxhost.wiro import messages
from fluxhost.wiro.schema import (
    CALLBACK_URL_NAMES,
    Input,
    InputError,
    choice_input,
    integer_input,
    number_input,
    text_value,
)

OPTIMIZERS = ("adamw8bit", "adamw", "adafactor")
SWITCHES = ("true", "false")
REFERENCE_MODELS = ("", "black-forest-labs/FLUX.1-dev")
MAX_SAMPLE_PROMPTS = 8
NAME_MAX_CHARS = 100


@dataclass(frozen=True)
class TrainingDefaults:
    steps: int
    learning_rate: float
    rank: int
    resolution: int


STANDARD = TrainingDefaults(steps=1000, learning_rate=4e-4, rank=16, resolution=512)
PORTRAIT = TrainingDefaults(steps=1000, learning_rate=2e-4, rank=32, resolution=512)
"""A person's likeness: half the learning rate and twice the rank of a style or an object."""


def _switch(name: str, label: str, description: str, default: str) -> Input:
    return Input(name, "select", label, description, default, options=tuple({"value": v, "label": v}
                                                                            for v in SWITCHES))


def training_inputs(defaults: TrainingDefaults, max_steps: int) -> dict[str, Input]:
    """Every training input, by id, with ``defaults`` (a tool publishes those it takes)."""
    return {item.id: item for item in (
        Input("selectedFolder", "text", "Training Folder",
              "The id of a folder of your uploads (File/FolderCreate, then File/Upload with its folderid): the "
              "pictures, each with an optional caption as name.txt beside name.jpg.", ""),
        Input("selectedFolderUrl", "text", "Training ZIP URL",
              "Or a ZIP archive of the pictures and their .txt captions, by http(s) URL (e.g. one File/Upload "
              "returned).", ""),
        Input("triggerWord", "text", "Trigger Word",
              "The word that calls up what is learnt: it replaces [trigger] in captions and leads a caption that "
              "does not name it; a picture without a caption is trained on it alone.", ""),
        Input("trainModelName", "text", "Model Name", f"The adapter's name, at most {NAME_MAX_CHARS} characters.", ""),
        Input("trainModelDescription", "textarea", "Model Description", "What the adapter is for.", ""),
        Input("trainingSteps", "number", "Training Steps",
              f"Optimizer steps, 1 to {max_steps}; 0 or empty: {defaults.steps}.", str(defaults.steps)),
        Input("steps", "number", "Steps", "The same as trainingSteps (which wins when both are given).", "0"),
        Input("learningRate", "number", "Learning Rate",
              f"0.000001 to 0.01; 0 or empty: {defaults.learning_rate:g}.", f"{defaults.learning_rate:g}"),
        Input("lora_rank", "number", "LoRA Rank",
              f"The adapter's rank, 1 to 256; 0 or empty: {defaults.rank}.", str(defaults.rank)),
        Input("batchSize", "number", "Batch Size", "Pictures per step, 1 to 64; 0 or empty: 1.", "1"),
        Input("resolution", "number", "Resolution",
              f"The side, in pixels, each picture's centred square is trained at, 64 to 2048; 0 or empty: "
              f"{defaults.resolution}.", str(defaults.resolution)),
        Input("optimizer", "select", "Optimizer",
              "adamw8bit (bitsandbytes, on CUDA; AdamW elsewhere), adamw or adafactor.", "adamw8bit",
              options=tuple({"value": name, "label": name} for name in OPTIMIZERS)),
        Input("gradient_accumulation_steps", "number", "Gradient Accumulation Steps",
              "Batches summed into one step, 1 to 64; 0 or empty: 1.", "1"),
        _switch("gradient_checkpointing", "Gradient Checkpointing",
                "Recompute activations in the backward pass: far less memory, about a third slower.", "true"),
        Input("caption_dropout_rate", "number", "Caption Dropout Rate",
              "The share of steps a picture is trained on without its caption, 0 to 1.", "0.05"),
        _switch("cache_latents", "Cache Latents",
                "Pictures are encoded once, before the first step (always, here).", "true"),
        _switch("cache_latents_to_disk", "Cache Latents To Disk",
                "Encoded pictures are kept in memory for the training (a training set fits).", "false"),
        _switch("quantize", "Quantize",
                "The base weights are trained on as the model is served: an operator serves them quantized (nf4, "
                "QLoRA) with the model's quantize setting.", "false"),
        Input("referenceModel", "select", "Reference Model", "The base weights: those this tool is served with.", "",
              options=tuple({"value": name, "label": name or "served"} for name in REFERENCE_MODELS)),
        Input("guidance_scale", "number", "Guidance Scale",
              "The guidance a guidance-distilled model (FLUX.1 [dev]) is given while it learns, 0 to 50; 0 or "
              "empty: 1.", "1"),
        Input("seed", "text", "Seed", "Seed of the training (its batches and noise); empty: random.", ""),
        Input("saveEvery", "number", "Save Every",
              "Steps between checkpoints, 1 or more; 0 or empty: 250. A killed training keeps its last; a "
              f"training given as {RESUME_INPUT} goes on from it.", "250"),
        Input("max_step_saves_to_keep", "number", "Checkpoints To Keep",
              "How many of the newest checkpoints are kept, 1 to 100; 0 or empty: 4.", "4"),
        Input("sampleEvery", "number", "Sample Every",
              "Steps between sample pictures of the prompts; 0 or empty: 250 (and at the end).", "250"),
        _switch("disable_sampling", "Disable Sampling", "No sample pictures.", "false"),
        Input("prompt", "textarea", "Sample Prompts",
              f"Up to {MAX_SAMPLE_PROMPTS} prompts, one per line, drawn with the adapter as it trains ([trigger]: "
              "the trigger word); empty: the trigger word.", ""),
        _switch("autocaption", "Autocaption",
                "Caption the pictures with a captioning model: none is configured on this server, so each "
                "picture's .txt caption (or the trigger word alone) is used; true is refused.", "false"),
        Input("autocaption_prefix", "text", "Caption Prefix", "Put before every caption.", ""),
        Input("autocaption_suffix", "text", "Caption Suffix", "Put after every caption.", ""),
        Input(RESUME_INPUT, "number", "Resume Task Id",
              "fluxhost's own: the id of an ended training task of your project (a killed one) to go on from its "
              "newest checkpoint, with the same pictures and settings.", ""),
    )}


class TrainingForm:
    """A training tool's inputs: published as Tool/Detail shows them, read from a Run."""

    def __init__(self, published: tuple[Input, ...], defaults: TrainingDefaults, max_steps: int,
                 refuse_unknown: bool = False):
        self.published = published
        self.ids = frozenset(item.id for item in published)
        self.defaults = defaults
        self.max_steps = max_steps
        self.refuse_unknown = refuse_unknown

    @classmethod
    def of(cls, tool: Tool, max_steps: int, refuse_unknown: bool = False) -> TrainingForm:
        defaults = PORTRAIT if tool.project.endswith("portrait") else STANDARD
        inputs = training_inputs(defaults, max_steps)
        return cls(tuple(inputs[name] for name in tool.inputs or ()), defaults, max_steps, refuse_unknown)

    def items(self) -> list[dict[str, Any]]:
        return [item.item() for item in self.published]

    def parse(self, raw: dict[str, Any], callback_url: str = "") -> RunRequest:
        """The training Run a client's inputs ask for; :class:`InputError` for the first bad one."""
        unknown = tuple(sorted(name for name in raw if name not in self.ids | set(CALLBACK_URL_NAMES)))
        if unknown and self.refuse_unknown:
            raise InputError(messages.parameter(unknown[0], "is not an input of this tool (see Tool/Detail)"))
        seed = text_value(raw.get("seed")) if "seed" in self.ids else ""
        return RunRequest(
            prompt="", seed=integer_input("seed", seed, 0, SEED_MAX) if seed else None, training=self.read(raw),
            callback_url=callback_url, ignored_inputs=unknown,
            parameters={name: raw[name] for name in self.ids if name in raw and not isinstance(raw[name], bytes)},
        )

    def _given(self, raw: dict[str, Any], name: str) -> bool:
        if name not in self.ids:
            return False
        text = text_value(raw.get(name))
        return text not in ("", "0", "0.0")

    def _integer(self, raw: dict[str, Any], name: str, low: int, high: int, default: int) -> int:
        return integer_input(name, raw[name], low, high) if self._given(raw, name) else default

    def _number(self, raw: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
        return number_input(name, raw[name], low, high) if self._given(raw, name) else default

    def _switch(self, raw: dict[str, Any], name: str, default: str) -> bool:
        value = text_value(raw.get(name)) if name in self.ids else ""
        return choice_input(name, value or default, SWITCHES) == "true"

    def _text(self, raw: dict[str, Any], name: str, limit: int = NAME_MAX_CHARS) -> str:
        text = " ".join(text_value(raw.get(name)).split()) if name in self.ids else ""
        if len(text) > limit:
            raise InputError(messages.parameter(name, f"must be at most {limit} characters"))
        return text

    def read(self, raw: dict[str, Any]) -> TrainingRequest:
        folder = self._text(raw, "selectedFolder")
        archive = raw.get("selectedFolderUrl") if "selectedFolderUrl" in self.ids else None
        archive = archive if isinstance(archive, bytes) else text_value(archive) or None
        if not folder and not archive:
            raise InputError(messages.parameter("selectedFolder", "required: a folder id, or a ZIP archive's URL "
                                                                  "as selectedFolderUrl"))
        if self._switch(raw, "autocaption", "false"):
            raise InputError(messages.parameter("autocaption", "must be false: no captioning model is configured "
                                                               "on this server (give each picture a .txt caption)"))
        reference = text_value(raw.get("referenceModel")) if "referenceModel" in self.ids else ""
        if reference not in REFERENCE_MODELS:
            raise InputError(messages.one_of("referenceModel", REFERENCE_MODELS))
        steps = self._integer(raw, "steps", 1, self.max_steps, self.defaults.steps)
        steps = self._integer(raw, "trainingSteps", 1, self.max_steps, steps)
        sampling = not self._switch(raw, "disable_sampling", "false")
        prompts = tuple(line.strip() for line in text_value(raw.get("prompt")).splitlines() if line.strip()) \
            if "prompt" in self.ids else ()
        if len(prompts) > MAX_SAMPLE_PROMPTS:
            raise InputError(messages.parameter("prompt", f"takes at most {MAX_SAMPLE_PROMPTS} sample prompts"))
        trigger = self._text(raw, "triggerWord")
        return TrainingRequest(
            folder=folder, archive=archive, trigger_word=trigger,
            name=self._text(raw, "trainModelName"), description=self._text(raw, "trainModelDescription", 2000),
            steps=steps,
            learning_rate=self._number(raw, "learningRate", 1e-6, 1e-2, self.defaults.learning_rate),
            rank=self._integer(raw, "lora_rank", 1, 256, self.defaults.rank),
            batch_size=self._integer(raw, "batchSize", 1, 64, 1),
            resolution=self._integer(raw, "resolution", 64, 2048, self.defaults.resolution),
            optimizer=choice_input("optimizer", text_value(raw.get("optimizer")) or "adamw8bit", OPTIMIZERS)
            if "optimizer" in self.ids else "adamw8bit",
            gradient_accumulation=self._integer(raw, "gradient_accumulation_steps", 1, 64, 1),
            gradient_checkpointing=self._switch(raw, "gradient_checkpointing", "true"),
            caption_dropout=(number_input("caption_dropout_rate", raw["caption_dropout_rate"], 0, 1)
                             if "caption_dropout_rate" in self.ids and text_value(raw.get("caption_dropout_rate"))
                             else 0.05),
            guidance=self._number(raw, "guidance_scale", 0, 50, 1.0),
            save_every=self._integer(raw, "saveEvery", 1, self.max_steps, 250),
            keep_checkpoints=self._integer(raw, "max_step_saves_to_keep", 1, 100, 4),
            sample_every=self._integer(raw, "sampleEvery", 1, self.max_steps, 250) if sampling else 0,
            sample_prompts=(prompts or ((trigger,) if trigger else ())) if sampling else (),
            caption_prefix=self._text(raw, "autocaption_prefix", 500),
            caption_suffix=self._text(raw, "autocaption_suffix", 500),
            resume_task=self._integer(raw, RESUME_INPUT, 1, 2**63 - 1, 0) or None,
        )
