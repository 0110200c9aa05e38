"""The diffusers FLUX engine: a FLUX.1, FLUX.2 [dev] or FLUX.2 [klein] pipeline (local folder or hub id), with
the model's memory and speed options, prompt-encoding cache, batched calls and step previews."""

from __future__ import annotations

import inspect
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from diffusers import AutoencoderTiny, DiffusionPipeline, FluxKontextPipeline, FluxPipeline, FluxTransformer2DModel
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor
from PIL.Image import Image, Resampling

from fluxhost.engines.adapters import AdapterCache, HotswapSlots, adapter_store
from fluxhost.engines.base import (
    BatchStepCallback,
    GenerationRequest,
    GenerationStopped,
    KindUnsupported,
    StartCallback,
    WeightsUnavailable,
    generate,
)
from fluxhost.engines.families import Encoding, Family, Flux1, family_of
from fluxhost.engines.lora_training import LoraTraining
from fluxhost.engines.noise import position_ramps
from fluxhost.engines.references import taking_several_references
from fluxhost.engines.training import Checkpoint, PictureReader, TrainingExample, TrainingPlan, TrainingProgress
from fluxhost.engines.upscale import Upscaler, render_size
from fluxhost.settings import ModelSettings

log = logging.getLogger(__name__)

PREVIEW_SCALE = 0.25
WORD = re.compile(r"\w+")  # what prompt_words_only keeps of a prompt
WARMUP_STEPS = 2
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """bfloat16 on accelerators; float32 on CPUs, where bfloat16 is far slower without AMX."""
    if dtype != "auto":
        return _DTYPES[dtype]
    return torch.float32 if device == "cpu" else torch.bfloat16


@contextmanager
def loading(weights: str) -> Iterator[None]:
    """Turns a loader's error about ``weights`` (missing, unreachable, malformed) into
    :class:`WeightsUnavailable` naming them."""
    try:
        yield
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsUnavailable(weights, first_line) from error


def device_lock(device: str) -> threading.Lock:
    """One lock per device, shared by every engine on it: two generations never fight over one
    GPU's memory and compute."""
    name = str(torch.device(device if device != "cuda" else "cuda:0"))
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(name, threading.Lock())


class PromptCache:
    """Text-encoder outputs of recent prompts (least recently used out first), keyed by the prompt
    and whatever else changes the encoding (sequence length, text-encoder LoRA layers)."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[tuple[object, ...], Encoding] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple[object, ...], compute) -> Encoding:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry
        self.misses += 1
        entry = compute()
        if self.size:
            self._entries[key] = entry
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry


class FluxEngine:
    """One diffusers pipeline, loaded once. Generations are serialised per device: a pipeline's
    scheduler keeps per-call state, and a GPU runs one generation fastest alone."""

    def __init__(self, weights: str, model: ModelSettings, *, device: str = "auto", label: str | None = None,
                 pictures: PictureReader | None = None):
        """``pictures``: reads the latents of training pictures and of pictures to edit where the
        VAE's encoder cannot (the demo model)."""
        self.weights = weights
        self.pictures = pictures
        self.model = model
        self.device = resolve_device(model.device if model.device != "auto" else device)
        self.dtype = resolve_dtype(model.dtype, self.device)
        self._label = label or (f"{weights} with transformer {model.transformer}" if model.transformer else weights)
        self.family: Family | None = None
        self.batches = 0
        self.prompts = PromptCache(model.prompt_cache)
        self._pipeline: DiffusionPipeline | None = None
        self._preview_decoder: AutoencoderTiny | None = None
        self._upscaler: Upscaler | None = None
        self._redraw_pipeline: DiffusionPipeline | None = None
        self._sizes_to_a_megapixel = False
        self.adapters: AdapterCache | HotswapSlots | None = None
        self.kinds: frozenset[str] = frozenset()
        self._lock = device_lock(self.device)

    @property
    def description(self) -> str:
        family = f"{self.family.name}, " if self.family else ""
        return f"{self._label} ({family}{self.device}, {str(self.dtype).removeprefix('torch.')})"

    # --- loading --------------------------------------------------------------------------

    def load(self) -> None:
        diffusers_logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        components = {"transformer": self._load_transformer()} if self.model.transformer else {}
        with loading(self.weights):
            pipeline = DiffusionPipeline.from_pretrained(self.weights, dtype=self.dtype, **self._load_quantization(),
                                                         **components)
        pipeline = self._for_kind(pipeline)
        self.family = family_of(pipeline)
        flux1_only = [option for option, used in (("noise_mean", self.model.noise_mean != "zero"),
                                                  ("negative_prompt", self.model.negative_prompt is not None)) if used]
        if flux1_only and not isinstance(self.family, Flux1):
            raise ValueError(f"{flux1_only[0]} is for FLUX.1 pipelines, not {self.family.name} ({self.weights})")
        if self.model.noise_mean == "positions-and-reference" and self.pictures is None:
            raise ValueError("noise_mean positions-and-reference is for a model with a picture reader (the demo's "
                             f"editor), which {self.weights} is not served with")
        self._quantize(pipeline)
        self._place(pipeline)
        if self.model.vae_tiling:
            pipeline.vae.enable_tiling()
        if self.model.vae_slicing:
            pipeline.vae.enable_slicing()
        if self.model.attention_backend:
            pipeline.transformer.set_attention_backend(self.model.attention_backend)
        if self.model.cache != "none":
            pipeline.transformer.enable_cache(self._cache_config())
        if self.model.compile:
            pipeline.transformer.compile_repeated_blocks(fullgraph=True)
        if self.model.preview_decoder:
            self._preview_decoder = AutoencoderTiny.from_pretrained(self.model.preview_decoder, dtype=self.dtype)
            self._preview_decoder.to(self.device)
        self._upscaler = Upscaler(self.model.upscaler, self.device, self.dtype)
        pipeline.set_progress_bar_config(disable=True)
        redraw = self._redrawing(pipeline)
        self.kinds = self._kinds(pipeline, redraw)
        self._redraw_pipeline = redraw if "image-to-image" in self.kinds else None
        self._sizes_to_a_megapixel = "max_area" in inspect.signature(pipeline.__call__).parameters  # Kontext
        self.adapters = adapter_store(pipeline, compiled=self.model.compile, count=self.model.lora_cache,
                                      megabytes=self.model.lora_cache_mb)
        self._pipeline = pipeline
        self._warm_up()

    def _load_transformer(self) -> FluxTransformer2DModel:
        """The model's ``transformer``: a diffusers folder or hub id, or a single .safetensors file (a
        local path, or ``owner/name/file.safetensors`` on the hub) configured as the pipeline's own."""
        source = self.model.transformer
        options: dict[str, object] = {"dtype": self.dtype}
        if self.model.quantize == "nf4":  # the pipeline's quantization skips components given to it
            from diffusers import BitsAndBytesConfig

            options["quantization_config"] = BitsAndBytesConfig(**self._nf4_options())
        with loading(source):
            if not source.endswith(".safetensors"):
                return FluxTransformer2DModel.from_pretrained(source, **options)
            file = Path(source)
            if file.is_absolute() and not file.is_file():
                raise FileNotFoundError(f"no file {source}")
            if not file.is_file() and "://" not in source:
                source = f"https://huggingface.co/{source}"
            return FluxTransformer2DModel.from_single_file(source, config=self.weights, subfolder="transformer",
                                                           **options)

    def _for_kind(self, pipeline: DiffusionPipeline) -> DiffusionPipeline:
        """The pipeline this engine generates with, made from the loaded one (FLUX.1 Kontext's takes
        several references; an engine for another kind of tool swaps in another class sharing the
        loaded components): FLUX.1 Kontext's where the model says ``kontext``."""
        if self.model.kontext:
            if not isinstance(pipeline, FluxPipeline):
                raise ValueError(f"kontext is for FLUX.1 folders, not {type(pipeline).__name__} ({self.weights})")
            pipeline = FluxKontextPipeline.from_pipe(pipeline)
        return taking_several_references(pipeline)

    def _kinds(self, pipeline: DiffusionPipeline, redraw: DiffusionPipeline | None) -> frozenset[str]:
        """What one loaded copy of the weights serves: drawing; editing where the pipeline takes
        images (Kontext, FLUX.2); redrawing where ``redraw``, an image-to-image pipeline sharing its
        components, exists."""
        kinds = {"text-to-image"}
        if "image" in inspect.signature(pipeline.__call__).parameters:
            kinds.add("edit")
        elif redraw is not None:
            kinds.add("image-to-image")
        if ("edit" not in kinds and isinstance(self.family, Flux1) and not self.model.compile
                and self.model.quantize in ("none", "nf4")):
            kinds.add("train")  # LoRA training on FLUX.1's transformer (QLoRA on nf4 weights)
        return frozenset(kinds)

    def _redrawing(self, pipeline: DiffusionPipeline) -> DiffusionPipeline | None:
        """The image-to-image pipeline of these weights (it shares the loaded components: no second
        copy of the weights), or None where the family has none (Kontext and FLUX.2 edit instead)."""
        from diffusers import AutoPipelineForImage2Image

        if "strength" in inspect.signature(pipeline.__call__).parameters:
            return pipeline
        try:
            redraw = AutoPipelineForImage2Image.from_pipe(pipeline, dtype=self.dtype)  # else it casts to float32
        except ValueError:
            return None
        if "strength" not in inspect.signature(redraw.__call__).parameters:
            return None
        redraw.set_progress_bar_config(disable=True)
        return redraw

    def _load_quantization(self) -> dict[str, object]:
        if self.model.quantize != "nf4":
            return {}
        from diffusers import PipelineQuantizationConfig

        return {"quantization_config": PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit", quant_kwargs=self._nf4_options(), components_to_quantize=["transformer"],
        )}

    def _nf4_options(self) -> dict[str, object]:
        return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": self.dtype}

    def _quantize(self, pipeline: DiffusionPipeline) -> None:
        if self.model.quantize not in ("int8", "fp8"):
            return
        try:
            from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
        except ImportError as error:
            raise RuntimeError("quantize int8/fp8 needs torchao: pip install torchao") from error
        config = Int8WeightOnlyConfig() if self.model.quantize == "int8" else Float8WeightOnlyConfig()
        quantize_(pipeline.transformer, config)

    def _place(self, pipeline: DiffusionPipeline) -> None:
        offload = self.model.offload
        if offload in ("model", "sequential") and self.device == "cpu":
            log.warning("offload=%s has nothing to do on the CPU: the weights already live in its memory", offload)
            offload = "none"
        if offload == "model":
            pipeline.enable_model_cpu_offload(device=self.device)
        elif offload == "sequential":
            pipeline.enable_sequential_cpu_offload(device=self.device)
        elif offload == "group":
            pipeline.enable_group_offload(onload_device=torch.device(self.device), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1)
        else:
            pipeline.to(self.device)

    def _cache_config(self):
        from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

        threshold = {} if self.model.cache_threshold is None else {"threshold": self.model.cache_threshold}
        if self.model.cache == "taylorseer":
            return TaylorSeerCacheConfig(taylor_factors_dtype=self.dtype)
        if self.family is None or self.family.name != "FLUX.1":
            # diffusers 0.42: MagCache ratios are calibrated on FLUX.1, FirstBlockCache breaks on FLUX.2 blocks.
            raise ValueError(f"cache={self.model.cache} works with FLUX.1 models only; use taylorseer")
        if self.model.cache == "first_block":
            return FirstBlockCacheConfig(**threshold)
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        return MagCacheConfig(num_inference_steps=self.model.steps, mag_ratios=FLUX_MAG_RATIOS, **threshold)

    def _warm_up(self) -> None:
        """One generation per configured size, so that compilation and kernel choice happen now."""
        for size in self.model.warmup_sizes:
            width, height = (int(side) for side in size.lower().split("x"))
            self.generate_batch([self._warm_up_request(width, height)], lambda: None, lambda *_: True)
            log.info("warmed up %s at %s", self._label, size)

    def _warm_up_request(self, width: int, height: int) -> GenerationRequest:
        return GenerationRequest("warm-up", width, height, 0, min(WARMUP_STEPS, self.model.steps), self.model.guidance)

    # --- training --------------------------------------------------------------------------

    def train(self, plan: TrainingPlan, examples: list[TrainingExample], resume: Checkpoint | None,
              progress: TrainingProgress) -> Checkpoint:
        """A LoRA adapter trained on these weights (see :mod:`fluxhost.engines.lora_training`); the
        pipeline draws as before once it returns. Samples are drawn as a LoRA Run draws."""
        if "train" not in self.kinds or self._pipeline is None:
            raise KindUnsupported(f"{self.description} does not train LoRA adapters")

        def sample(request: GenerationRequest) -> list[Image]:
            return generate(self, request, lambda: None, lambda *_: True)

        training = LoraTraining(self._pipeline, lambda prompt: self._encode(prompt), sample, self.adapters.forget,
                                positioned_noise=self.model.noise_mean != "zero", sample_steps=self.model.steps,
                                sample_guidance=self.model.guidance, pictures=self.pictures)
        return training.run(plan, examples, resume, progress)

    # --- generating ------------------------------------------------------------------------

    def _encode(self, prompt: str, text_adapters: tuple[object, ...] = ()) -> Encoding:
        """The prompt's encoding under the active adapters, ``text_adapters`` naming those among them
        that have text-encoder layers (an encoding made under other ones is another entry)."""
        if self.model.lowercase_prompts:
            prompt = prompt.lower()
        if self.model.prompt_words_only:
            prompt = " ".join(WORD.findall(prompt))
        key = (prompt, self.model.max_sequence_length, *text_adapters)
        return self.prompts.get(key, lambda: self.family.encode(self._pipeline, prompt, self.model.max_sequence_length))

    def generate_batch(self, requests: Sequence[GenerationRequest], on_start: StartCallback,
                       on_step: BatchStepCallback) -> list[list[Image] | None]:
        pipeline, family = self._pipeline, self.family
        if pipeline is None or family is None:
            raise RuntimeError("engine used before load()")
        first = requests[0]
        width, height = render_size(first.width, first.height, self.model.render_pixels,
                                    self.model.render_min_side)
        if first.strength is not None:
            if self._redraw_pipeline is None:
                raise KindUnsupported(f"{self.weights} does not redraw images")
            pipeline = self._redraw_pipeline
        if len(requests) > 1 and any(request.images for request in requests):
            raise ValueError("requests with input images run one at a time")
        # Row r of the pipeline's batch is image (r - first row) of request owner[r].
        owner = [index for index, request in enumerate(requests) for _ in range(request.num_images)]
        rows = {index: owner.index(index) for index in range(len(requests))}
        dropped: set[int] = set()

        def step_end(pipeline, step: int, _timestep, tensors: dict) -> dict:
            latents = tensors["latents"]
            for index, row in rows.items():
                if index in dropped:
                    continue

                def preview(row: int = row) -> Image:
                    return self._preview(latents[row : row + 1], height, width)

                if not on_step(index, step + 1, pipeline.num_timesteps, preview):
                    dropped.add(index)
            if len(dropped) == len(requests):
                pipeline._interrupt = True  # diffusers' documented way: skip the remaining steps
            return tensors

        # CPU generators give the same noise on every device, so a seed means one image, alone or batched.
        generators = [torch.Generator(device="cpu").manual_seed(request.seed + number)
                      for request in requests for number in range(request.num_images)]
        call_arguments = self._input_arguments(first, width, height)
        if self.model.noise_mean != "zero" and first.strength is None:  # redrawing starts from the input
            reference = call_arguments.get("image") if self.model.noise_mean == "positions-and-reference" else None
            call_arguments["latents"] = self._positioned_noise(generators, height, width, reference)
        with self._lock, torch.inference_mode():
            on_start()
            self.adapters.activate(first.adapters)  # a batch shares its adapters: they are in its batch_key
            text_adapters = self.adapters.text_encoder_key(first.adapters)

            def encode(prompt: str) -> Encoding:
                return self._encode(prompt, text_adapters)

            encodings = [encode(requests[index].prompt) for index in owner]
            prompt_arguments = family.prompt_arguments(pipeline, encodings, first.guidance, encode)
            if self.model.negative_prompt is not None and first.guidance > 1:
                negative = encode(self.model.negative_prompt)
                prompt_arguments |= family.negative_arguments(negative, len(encodings), first.guidance)
            try:
                result = pipeline(
                    **prompt_arguments,
                    width=width,
                    height=height,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance,
                    generator=generators,
                    max_sequence_length=self.model.max_sequence_length,
                    callback_on_step_end=step_end,
                    output_type="pil",
                    **call_arguments,
                )
            except BaseException:
                # a call that ends early leaves what one that ends would reset: the step caches'
                # counters and residuals (the next task would draw from them), offloaded models
                pipeline.maybe_free_model_hooks()
                raise
            self.batches += 1
            if len(dropped) == len(requests):
                raise GenerationStopped
            outputs: list[list[Image] | None] = []
            for index, request in enumerate(requests):
                start = rows[index]
                outputs.append(None if index in dropped else [
                    self._upscaler(image, first.width, first.height)
                    for image in result.images[start : start + request.num_images]])
        return outputs

    def _input_arguments(self, request: GenerationRequest, width: int, height: int) -> dict[str, object]:
        """The pipeline's arguments for what the request gives besides its prompt (input images,
        strength), generating at ``width`` x ``height``."""
        arguments: dict[str, object] = {}
        if request.images:
            if "edit" not in self.kinds and request.strength is None:
                raise KindUnsupported(f"{self.weights} takes no input images")
            arguments["image"] = list(request.images)
            if self._sizes_to_a_megapixel:
                # FLUX.1 Kontext would draw the picture at a megapixel (in 16-pixel steps) whatever
                # size it is asked: its previews, noise and upscaling are of the size asked.
                arguments["max_area"] = width * height
            if self.model.render_pixels and self._sizes_to_a_megapixel:
                # ...and size the references to a megapixel too: a model that draws small reads
                # its references at its own scale, as it draws.
                arguments["image"] = [self._at_render_scale(image) for image in request.images]
                arguments["_auto_resize"] = False
            if self.pictures is not None:
                if len(request.images) > 1:
                    raise ValueError(f"this model reads one input image (with its picture reader: the demo's), and "
                                     f"this task gives {len(request.images)}; configure FLUX.1 Kontext weights for "
                                     "several")
                # read at the picture's size, whatever the input's: the reader places shapes by fractions
                # of the picture, so an input of another shape is laid out anew (stretched, a circle
                # came out an ellipse, or two)
                arguments["image"] = self._read_pictures(arguments["image"], width, height)
        if request.strength is not None:
            arguments["strength"] = request.strength
        return arguments

    def _read_pictures(self, images: list[Image], width: int, height: int) -> torch.Tensor:
        """The input images as the latents the pipeline would encode them to at ``width`` x
        ``height`` (scaled), read by the model's picture reader instead of its VAE's encoder: FLUX.1's
        pipelines take latents given as their ``image`` as they are."""
        vae = self._pipeline.vae
        latents = torch.stack([self.pictures.reference(image, width, height) for image in images])
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        return latents.to(vae.device, vae.dtype)

    def _at_render_scale(self, image: Image) -> Image:
        """``image`` resized to the size this model draws a picture of its aspect ratio at."""
        size = render_size(image.width, image.height, self.model.render_pixels, self.model.render_min_side)
        return image if image.size == size else image.convert("RGB").resize(size, Resampling.BOX)

    def _positioned_noise(self, generators: list[torch.Generator], height: int, width: int,
                          reference: torch.Tensor | None = None) -> torch.Tensor:
        """The pipeline's own starting noise for these generators, plus :func:`position_ramps`, plus
        the first picture to edit's ``reference`` latents where given (resized to the picture's)."""
        pipeline = self._pipeline
        channels = pipeline.transformer.config.in_channels // 4
        patch = 2 * pipeline.vae_scale_factor  # as the pipeline sizes its latents: whole 2x2 patches
        rows, columns = 2 * (height // patch), 2 * (width // patch)
        # as every FLUX.1 pipeline's prepare_latents draws it (Kontext's also encodes its image there)
        noise = randn_tensor((len(generators), channels, rows, columns), generator=generators,
                             device=pipeline._execution_device, dtype=pipeline.transformer.dtype)
        noise = noise + position_ramps(len(generators), channels, rows, columns).to(noise)
        if reference is not None:
            first = reference[:1].to(noise)
            if first.shape[-2:] != (rows, columns):
                first = torch.nn.functional.interpolate(first, size=(rows, columns), mode="bilinear")
            noise = noise + first
        return pipeline._pack_latents(noise, len(generators), channels, rows, columns)

    def _preview(self, packed_latents: torch.Tensor, height: int, width: int) -> Image:
        """One image's current latents, decoded by the tiny preview decoder when configured, else
        by the model's own VAE at a quarter of the size (about 1/16 of a full decode's cost), or
        whole where the model draws small and is upscaled."""
        pipeline, family = self._pipeline, self.family
        latents = family.image_latents(pipeline, packed_latents, height, width)
        if self._preview_decoder is not None:
            decoder = self._preview_decoder
            config = decoder.config
            latents = latents / getattr(config, "scaling_factor", 1.0) + (getattr(config, "shift_factor", 0.0) or 0.0)
        else:
            decoder = pipeline.vae
            if not self.model.render_pixels:
                latents = torch.nn.functional.interpolate(latents, scale_factor=PREVIEW_SCALE, mode="area")
            if family.scales_for_vae():
                latents = latents / decoder.config.scaling_factor + decoder.config.shift_factor
        with torch.inference_mode():
            decoded = decoder.decode(latents.to(decoder.device, decoder.dtype), return_dict=False)[0]
        return pipeline.image_processor.postprocess(decoded, output_type="pil")[0]

