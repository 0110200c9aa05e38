"""The hosted FLUX family: every FLUX tool the hosted API's clients call, under its own slug, with
the inputs its clients send and the open family of weights that serves it here.

The inputs are named as the official clients send them (the n8n package's nodes), so that a
node written for a hosted tool runs unchanged against the same slug here. Which weights stand
behind each open family is :mod:`fluxhost.models`' business (presets, or the demo model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["text-to-image", "edit", "image-to-image", "upscale", "train"]
OpenFamily = Literal["dev", "schnell", "kontext", "flux2", "srpo", "upscaler"]

DEV_INPUTS = ("prompt", "width", "height", "samples", "scale", "seed", "steps")
LORA_INPUTS = ("selectedLoraModel", "selectedLoraModelPrivate", "selectedLoraModelPrivateUrl")
WEIGHTED_LORAS = "loras"
"""fluxhost's own input on the LoRA tools, after the node's: several adapters, each with its weight."""
BASE_MODEL_INPUTS = ("selectedModel", "selectedModelPrivate")
IMAGE_URL_INPUTS = ("inputImageUrl", "inputImage2Url", "inputImage3Url")
TRAINING_SET_INPUTS = ("selectedFolder", "selectedFolderUrl")
TRAINING_INPUTS = (
    *TRAINING_SET_INPUTS, "triggerWord", "trainModelName", "trainModelDescription", "trainingSteps", "steps",
    "learningRate", "lora_rank", "batchSize", "resolution", "optimizer", "gradient_accumulation_steps",
    "gradient_checkpointing", "caption_dropout_rate", "cache_latents", "cache_latents_to_disk", "quantize",
    "referenceModel", "guidance_scale", "seed", "saveEvery", "max_step_saves_to_keep", "sampleEvery",
    "disable_sampling", "prompt", "autocaption", "autocaption_prefix", "autocaption_suffix",
)
PORTRAIT_TRAINING_INPUTS = (*TRAINING_SET_INPUTS, "triggerWord", "trainModelName", "trainingSteps", "learningRate")
RESUME_INPUT = "resumeTaskId"
"""fluxhost's own input on the training tools, after the node's: an ended training to go on from."""


@dataclass(frozen=True)
class Member:
    """One tool of the family: its slug, how it is listed, what it does and the inputs it takes.

    ``inputs`` None: the seed tool's inputs (FLUX 1.1 [pro]'s page), with the input image for an
    edit tool; ``images``: how many input images it reads (``inputImageUrl``, ``inputImage2Url``...);
    ``image_required``: whether the first is required (edit, image-to-image and upscale tools) or
    optional (FLUX.2's reference image: with one it edits, without it draws)."""

    slug: str
    title: str
    description: str
    kind: Kind
    inputs: tuple[str, ...] | None
    family: OpenFamily
    images: int = 0
    image_required: bool = False
    megapixels: float = 1.0  # the size its aspectRatio options give
    categories: tuple[str, ...] = ()


def _text(slug: str, title: str, description: str, inputs: tuple[str, ...] | None, family: OpenFamily,
          **extra: object) -> Member:
    return Member(slug, title, description, "text-to-image", inputs, family, **extra)


def _edit(slug: str, title: str, description: str, inputs: tuple[str, ...] | None, images: int = 1) -> Member:
    return Member(slug, title, description, "edit", inputs, "kontext", images=images, image_required=True)


MEMBERS: tuple[Member, ...] = (
    _text("black-forest-labs/flux-pro-1.1", "FLUX 1.1 [pro]",
          "FLUX text-to-image: state-of-the-art image generation with excellent prompt following.",
          None, "dev"),
    _text("black-forest-labs/flux-pro-1-1-ultra", "FLUX 1.1 [pro] Ultra",
          "FLUX at about four megapixels: each aspect ratio at twice the width and height of FLUX 1.1 [pro].",
          None, "dev", megapixels=4.0),
    _edit("black-forest-labs/flux-kontext-pro", "FLUX.1 Kontext [pro]",
          "FLUX.1 Kontext: text-based image editing, transforming images through natural language.", None),
    _edit("black-forest-labs/flux-kontext-max", "FLUX.1 Kontext [max]",
          "FLUX.1 Kontext [max]: image editing with the strongest prompt following and typography.", None),
    _edit("wiroai/flux-kontext-max-multi", "FLUX.1 Kontext [max] Multi-Image",
          "FLUX.1 Kontext with two input images: combine them, or take a subject from one into the other.",
          ("prompt", "inputImageUrl", "inputImage2Url", "outputFormat", "promptUpsampling", "safetyTolerance",
           "seed"), images=2),
    _text("black-forest-labs/flux-2-pro", "FLUX.2 [pro]",
          "FLUX.2: text-to-image at the width and height asked, or an edit of a reference image.",
          ("prompt", "inputImageUrl", "width", "height", "outputFormat", "safetyTolerance", "seed"), "flux2",
          images=1),
    _text("black-forest-labs/flux-2-flex", "FLUX.2 [flex]",
          "FLUX.2 [flex]: FLUX.2 with its steps and guidance in your hands, for typography and fine detail.",
          ("prompt", "inputImageUrl", "width", "height", "outputFormat", "safetyTolerance", "seed", "guidance",
           "steps"), "flux2", images=1),
    _text("wiro/FLUX.2-dev", "FLUX.2 [dev]",
          "FLUX.2 [dev]: open-weights FLUX.2, text-to-image or editing a reference image, several samples a run.",
          ("prompt", "inputImageUrl", "width", "height", "samples", "scale", "seed", "steps"), "flux2", images=1),
    _text("wiro/FLUX.2-dev-turbo", "FLUX.2 [dev] Turbo",
          "FLUX.2 [dev] in few steps: the same inputs, faster.",
          ("prompt", "inputImageUrl", "width", "height", "samples", "scale", "seed", "steps"), "flux2", images=1),
    _edit("wiro/flux_kontext_dev", "FLUX.1 Kontext [dev]",
          "FLUX.1 Kontext [dev]: open-weights image editing by instruction.",
          ("prompt", "inputImageUrl", "samples", "scale", "seed", "steps")),
    _edit("wiro/flux_kontext_dev_with_2_image", "FLUX.1 Kontext [dev] with 2 images",
          "FLUX.1 Kontext [dev] reading two input images.",
          ("prompt", "inputImageUrl", "inputImage2Url", "samples", "scale", "seed", "steps"), images=2),
    _edit("wiro/flux_kontext_dev_with_3_image", "FLUX.1 Kontext [dev] with 3 images",
          "FLUX.1 Kontext [dev] reading three input images.",
          ("prompt", "inputImageUrl", "inputImage2Url", "inputImage3Url", "samples", "scale", "seed", "steps"),
          images=3),
    _text("wiro/text-to-image-flux", "Text To Image Flux",
          "FLUX.1 [dev] text-to-image at the width and height asked, several samples a run.",
          (*BASE_MODEL_INPUTS, *DEV_INPUTS), "dev"),
    _text("wiro/text-to-image-flux-fast", "Text To Image Flux Fast",
          "FLUX.1 [schnell] text-to-image in a few steps.", (*BASE_MODEL_INPUTS, *DEV_INPUTS), "schnell"),
    _text("wiro/text-to-image-flux-lora", "Text To Image Flux Lora",
          "FLUX.1 [dev] text-to-image with a LoRA adapter: from the server's library, your own, or a URL.",
          (*BASE_MODEL_INPUTS, *LORA_INPUTS, *DEV_INPUTS, WEIGHTED_LORAS), "dev"),
    _text("wiro/text-to-image-flux-lora-fast", "Text To Image Flux Lora Fast",
          "FLUX.1 [schnell] text-to-image with a LoRA adapter, in a few steps.",
          (*BASE_MODEL_INPUTS, *LORA_INPUTS, *DEV_INPUTS, WEIGHTED_LORAS), "schnell"),
    Member("wiro/img-to-img-flux", "Image To Image Flux",
           "FLUX.1 [dev] image-to-image: the input image redrawn from the prompt, as far as the strength says.",
           "image-to-image", ("prompt", "inputImageUrl", "strength", "samples", "scale", "seed", "steps",
                              *BASE_MODEL_INPUTS), "dev", images=1, image_required=True),
    Member("wiroai/flux-upscaler", "Flux Upscaler",
           "Upscales an image by the factor asked, redrawing fine detail (FLUX.1 ControlNet upscaler).",
           "upscale", ("inputImageUrl", "scale", "steps", "controlnetConditioningScale", "controlGuidanceStart",
                       "controlGuidanceEnd"), "upscaler", images=1, image_required=True),
    _text("tencent/Hunyuan-Flux-SRPO", "Hunyuan Flux SRPO",
          "FLUX.1 [dev] fine-tuned by Tencent with SRPO for realism: text-to-image, or image-to-image from an "
          "input image.", ("prompt", "inputImageUrl", "strength", "width", "height", "samples", "scale", "seed",
                           "steps"), "srpo", images=1),
    Member("wiro/train-flux-lora", "Train Flux Lora",
           "Trains a FLUX.1 [dev] LoRA adapter on your pictures (a folder of uploads or a ZIP, a .txt caption beside "
           "each): progress, sample pictures and checkpoints as it goes; the adapter is yours to use at once.",
           "train", (*TRAINING_INPUTS, RESUME_INPUT), "dev"),
    Member("wiro/train-flux-lora-portrait", "Train Flux Lora Portrait",
           "Trains a FLUX.1 [dev] LoRA adapter of a person from a few portraits, with settings made for faces.",
           "train", (*PORTRAIT_TRAINING_INPUTS, RESUME_INPUT), "dev"),
)

BY_SLUG: dict[str, Member] = {member.slug: member for member in MEMBERS}


def member(slug: str) -> Member | None:
    """The family tool served under ``slug`` (as the catalog spells it), if it is one."""
    return BY_SLUG.get(slug)
