"""Every knob of the service, read from ``FLUXHOST_*`` environment variables (or a ``.env`` file).

Knobs only: nothing here imports the rest of the project. What the knobs add up to (the models
served, with presets and the demo model filled in) is :mod:`fluxhost.models`' business.

Nested values (the model table) are JSON, e.g.
``FLUXHOST_MODELS='{"black-forest-labs/flux-pro-1.1": {"weights": "black-forest-labs/FLUX.1-dev",
"device": "cuda", "dtype": "bfloat16", "steps": 28}}'``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError


class ModelSettings(BaseModel):
    """How one model slug (``owner/project``) is served: its weights, defaults, memory and speed.
    An option it does not have is refused (a misspelt ``stepz`` would otherwise be ignored)."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(
        default=None,
        description="Local folder or Hugging Face hub id of a diffusers FLUX pipeline; "
        "None serves the demo model shipped in the package (flat shapes in eight colours, offline on a CPU).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    transformer: str | None = Field(
        default=None, description="A FluxTransformer2DModel to use instead of the pipeline's (a fine-tune such as "
        "tencent/SRPO): a diffusers folder, a hub id, or a single .safetensors file: a local path, or a hub id "
        'plus file name ("tencent/SRPO/diffusion_pytorch_model.safetensors"); a single file takes its config '
        "from the pipeline's transformer.",
    )
    kontext: bool = Field(
        default=False, description="Serve a FLUX.1 folder as FLUX.1 Kontext (it then edits), for a Kontext "
        "transformer given with `transformer` (black-forest-labs/FLUX.1-Kontext-dev's) on FLUX.1 [dev]'s folder: its "
        "text encoders and VAE are the same, and nothing else need be downloaded.",
    )
    controlnet: str | None = Field(
        default=None, description="A FluxControlNetModel (folder or hub id, e.g. "
        "jasperai/Flux.1-dev-Controlnet-Upscaler) that makes this model the upscaler: the input image, resized to "
        "the asked size, steers a FLUX.1 [dev] pipeline. On the demo model, which has no ControlNet, the input is "
        "resampled to the asked size instead (by its upscaler).",
    )
    device: str = Field(default="auto", description='"auto" (the worker\'s device), "cpu", "cuda:1", "mps"...')
    steps: int = Field(default=28, ge=1, le=100, description="Denoising steps per image.")
    guidance: float = Field(default=3.5, ge=0, le=50)
    max_sequence_length: int = Field(default=512, ge=16, le=512, description="Prompt tokens the text encoder reads.")
    exposed_inputs: list[Literal["steps", "guidance"]] = Field(
        default_factory=list,
        description="Inputs beyond the seed tool's that this model publishes in Tool/Detail and takes at Run; "
        "the configured steps and guidance are their defaults.",
    )
    description: str = (
        "FLUX text-to-image: state-of-the-art image generation with excellent prompt following."
    )
    kind: Literal["text-to-image", "edit", "image-to-image", "upscale", "train"] = Field(
        default="text-to-image", description="edit: an instruction edits an input image (FLUX Kontext, FLUX.2 "
        "[klein]); image-to-image: an input image is redrawn from the prompt, as far as its strength says; "
        "upscale: an input image is enlarged by a factor; train: trains LoRA adapters on the model's FLUX.1 weights.",
    )
    strength: float = Field(default=0.85, gt=0, le=1, description="image-to-image: how far from the input to go.")
    # Memory
    offload: Literal["none", "model", "sequential", "group"] = Field(
        default="none", description="Keep weights in CPU memory and move them to the device as needed: whole "
        "models (model), layer by layer (sequential: least memory, slowest) or groups of blocks (group).",
    )
    vae_tiling: bool = Field(default=False, description="Decode in tiles: large images in less memory.")
    vae_slicing: bool = Field(default=False, description="Decode a batch one image at a time.")
    quantize: Literal["none", "int8", "fp8", "nf4"] = Field(
        default="none", description="Quantize the transformer's weights: int8 and fp8 with torchao (fp8 needs a "
        "recent GPU), nf4 with bitsandbytes (CUDA).",
    )
    # Speed
    compile: bool = Field(default=False, description="torch.compile the transformer's repeated blocks (GPU).")
    attention_backend: str | None = Field(
        default=None, description='diffusers attention backend: "native", "flash", "_native_cudnn", "sage"...'
    )
    cache: Literal["none", "first_block", "taylorseer", "magcache"] = Field(
        default="none", description="Skip transformer work on steps that change little (diffusers cache hooks)."
    )
    cache_threshold: float | None = Field(
        default=None, gt=0, description="The cache's threshold (first_block, magcache); default: diffusers'. "
        "These two decide the steps they skip from the whole batch: batched, a task may draw a little otherwise."
    )
    warmup_sizes: list[str] = Field(
        default_factory=list, description='Sizes ("1024x1024") generated once at load, so compilation and '
        "kernel selection happen before any request.",
    )
    max_batch: int = Field(
        default=4, ge=1, le=64, description="Queued tasks of the same size, steps and guidance run as one call."
    )
    batch_wait_ms: int = Field(
        default=0, ge=0, le=10_000, description="How long a batch waits for more tasks (0: only those queued).",
    )
    render_pixels: int | None = Field(
        default=None, ge=16 * 16, le=4096 * 4096, description="Generate at about this many pixels, in the requested "
        "shape, and upscale to the requested size: for models trained small (the demo model). None: generate at "
        "the requested size.",
    )
    render_min_side: int | None = Field(
        default=None, ge=16, le=4096, description="With render_pixels: the shorter side is drawn at least this "
        "long (a wide or tall picture then draws at more pixels), for models whose shapes blur when drawn smaller "
        "(the demo model). None: no minimum.",
    )
    upscaler: str | None = Field(
        default=None, description="A Swin2SR super-resolution model (folder or hub id) for that upscale; "
        "None: Lanczos resampling alone.",
    )
    negative_prompt: str | None = Field(
        default=None, description="Classifier-free guidance at the request's guidance scale, away from this prompt "
        '("": from no prompt), for FLUX.1 models without a guidance embedding that were trained with empty captions '
        "(the demo model, de-distilled FLUX): twice the transformer's work. None: guidance as the model takes it.",
    )
    example_prompt: str = Field(
        default="", description="A prompt this model draws as asked, published with the prompt input (as its "
        "`example`) for forms to show as a placeholder; empty: none.",
    )
    lowercase_prompts: bool = Field(
        default=False, description="Prompts are read in lower case, for a model whose T5 encoder learned lower-case "
        "text only (the demo model: \"A Red Circle\" is \"a red circle\"). Real FLUX reads case.",
    )
    prompt_words_only: bool = Field(
        default=False, description="Prompts are read as their words alone, punctuation and symbols dropped, for a "
        "model that learned captions of plain words (the demo model: '\"A red circle, please.\"' is 'A red circle "
        "please'). Real FLUX reads punctuation.",
    )
    noise_mean: Literal["zero", "positions", "positions-and-reference"] = Field(
        default="zero", description="The starting noise's mean: zero (FLUX), or positions: ramps across and down "
        "the picture, for FLUX.1 models trained to start from them (the demo model); positions-and-reference: the "
        "ramps plus the latents of the picture to edit, for an editing model trained to start from them (the demo's "
        "editor, which reads pictures with the demo's picture reader).",
    )
    prompt_cache: int = Field(default=64, ge=0, description="Prompts whose text-encoder outputs are kept (LRU).")
    lora_cache: int = Field(
        default=8, ge=1, le=256, description="LoRA adapters kept loaded in the pipeline (least recently used "
        "out first), so that the next task naming one starts without reading its file.",
    )
    lora_cache_mb: int = Field(
        default=1024, ge=0, description="The most memory (MiB) the loaded LoRA adapters may take together; the "
        "adapters of the running task stay loaded even beyond it.",
    )
    preview_decoder: str | None = Field(
        default=None, description="An AutoencoderTiny (folder or hub id, e.g. madebyollin/taef1) for step "
        "previews instead of the quarter-size VAE decode.",
    )
    setting: str = Field(
        default="FLUXHOST_MODELS", exclude=True,
        description="The setting this model came from, named in messages about its weights.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLUXHOST_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: a SQLite file in the data folder."
    )
    public_url: str | None = Field(
        default=None, description="Base of the file links the API hands out; default: host+port."
    )
    storage: Literal["local", "s3"] = Field(
        default="local", description="Where task files go: the data folder, served by the API; or an "
        "S3-compatible bucket (the FLUXHOST_S3_* settings), downloaded from there.",
    )
    s3_bucket: str = Field(default="", description="The bucket (it must exist).")
    s3_endpoint_url: str | None = Field(
        default=None, description="The store's address for MinIO, SeaweedFS, R2...; default: AWS S3."
    )
    s3_public_endpoint_url: str | None = Field(
        default=None, description="The store's address as clients reach it, when not the same as the "
        "service's (inside a compose network, say): download URLs are made for it.",
    )
    s3_region: str | None = Field(default=None, description="The bucket's region; default: boto3's.")
    s3_access_key_id: str | None = Field(
        default=None, description="With the secret: the store's credentials; default: boto3's lookup "
        "(AWS_* variables, profile, instance role).",
    )
    s3_secret_access_key: SecretStr | None = None
    s3_prefix: str = Field(default="", description='Prepended to every object key, e.g. "fluxhost/".')
    s3_url_mode: Literal["presigned", "public"] = Field(
        default="presigned", description="presigned: signed download URLs, the bucket stays private; public: "
        "plain URLs under FLUXHOST_S3_PUBLIC_URL (objects must be publicly readable there).",
    )
    s3_public_url: str | None = Field(
        default=None, description="Base of public URLs (a CDN); default: the bucket's own address."
    )
    s3_url_seconds: int = Field(
        default=604_800, ge=60, le=604_800, description="How long a presigned URL works (at most 7 days)."
    )
    s3_path_style: bool = Field(
        default=False, description="Address the bucket as endpoint/bucket/key (most self-hosted stores).",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    api_threads: int | None = Field(
        default=None, ge=1, description="Threads doing the API's database work off the event loop; default: "
        "with SQLite 2, or 1 when the worker runs in the API's process; 8 with a database across the network."
    )
    worker_concurrency: int = Field(default=1, ge=0, description="Tasks run at once; 0: no worker.")
    rate_limit_per_minute: int = Field(
        default=6000, ge=0, description="Requests one API key may make per minute (polls included), answered "
        "429 with Retry-After beyond it; counted in Redis when FLUXHOST_EVENTS_URL (or the broker) is Redis, "
        "else per API process. 0: no limit.",
    )
    auth_failure_limit_per_address: int = Field(
        default=60, ge=0, description="Failed authentications one client address may make per minute; beyond, "
        "every request from it (good ones too) is answered 429 with Retry-After until the minute ends. Counted "
        "where request rates are. 0: no limit.",
    )
    auth_failure_limit_per_key: int = Field(
        default=600, ge=0, description="Failed authentications one API key may have per minute, from all "
        "addresses together; beyond, the key's every request is answered 429 until the minute ends. Larger "
        "than the address's budget: the key is public, and anyone may fail in its name. 0: no limit.",
    )
    max_unfinished_tasks_per_key: int = Field(
        default=1000, ge=0, description="Queued plus running tasks one API key may have; a Run beyond is "
        "refused. 0: no limit.",
    )
    max_unfinished_tasks_per_project: int = Field(
        default=5000, ge=0, description="Queued plus running tasks one project may have (all its keys). 0: no limit."
    )
    max_queued_tasks_per_model: int = Field(
        default=10_000, ge=0, description="A Run is refused when its model already has this many tasks waiting: "
        "better told now than served hours later. 0: no limit.",
    )
    max_body_bytes: int = Field(
        default=1_000_000, ge=10_000, description="Largest request body, answered 413 beyond (multipart uploads "
        "may be FLUXHOST_INPUT_MAX_BYTES plus 1 MB).",
    )
    body_read_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Time a request's body may take to arrive, all of it; a slower "
        "one is answered 408 and its connection closed (a 21 MB upload needs about 3 Mbit/s at the default).",
    )
    max_prompt_chars: int = Field(default=10_000, ge=1, description="Longest prompt accepted, in characters.")
    database_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="How long a request waits for a locked SQLite database (or, on "
        "PostgreSQL, a lock another transaction holds, a free connection or a new one from the server) before it is "
        "answered 503, to be retried.",
    )
    shutdown_grace_seconds: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long running tasks may go on finishing; those still "
        "running then are stopped and queued again (for the next start, or another process of the fleet).",
    )
    worker_process: bool = Field(
        default=True, description="The embedded worker runs in a child process (restarted if it dies), so "
        "that the API and the worker do not share one interpreter lock (GIL); false: threads of the API's "
        "process. Without effect when a broker is set.",
    )
    broker_url: str | None = Field(
        default=None, description="redis://...: tasks go to Celery workers (`fluxhost worker`), a queue per "
        "model; `fluxhost serve` is then an API process only. Default: worker threads in the API process.",
    )
    events_url: str | None = Field(
        default=None, description="redis://...: task events through Redis pub/sub, shared by every API and "
        "worker process; default: the broker's URL when it is Redis, else in-process only.",
    )
    broker_visibility_seconds: int = Field(
        default=3600, ge=10, description="A message a worker took and never acknowledged (it died) goes back "
        "to the queue after this long; recovery in the store has usually run the task again by then.",
    )
    broker_transport_options: dict[str, Any] = Field(
        default_factory=dict, description='JSON: more of kombu\'s transport options, e.g. {"master_name": '
        '"mymaster"} for Redis Sentinel, or how often unacknowledged messages are looked for '
        '("unacked_restore_interval", "unacked_restore_throttle").',
    )
    engine: Literal["diffusers", "bench"] = Field(
        default="diffusers", description='"bench" swaps every model for a solid-colour engine.'
    )
    bench_step_ms: float = Field(
        default=0.0, ge=0, le=60_000, description="The bench engine's time per denoising step (a model's "
        "steps times this is a task's engine time)."
    )
    models: dict[str, ModelSettings] = Field(
        default_factory=dict, description="The models table: slug -> how it is served. Unset: the seed's slug, "
        "black-forest-labs/flux-pro-1.1, with its default settings (the demo model).",
    )
    presets: str = Field(
        default="", description='Presets served under their own slugs, comma-separated: "schnell,dev,klein".'
    )
    flux_pro_model: str | None = Field(
        default=None, description="What serves black-forest-labs/flux-pro-1.1: a preset name (schnell, dev, "
        "klein), a hub id or a diffusers folder; default: the models table (the demo model).",
    )
    devices: str = Field(
        default="auto", description='Devices, one worker and one copy of every model each: "cuda:0,cuda:1"; '
        '"auto": the first GPU, else the CPU.',
    )
    previews: bool = Field(
        default=False, description="Progress frames carry a small JPEG of the image so far (costs time)."
    )
    torch_threads: int | None = Field(default=None, ge=1, description="Pin torch CPU threads.")
    nonce_mode: Literal["compatible", "strict"] = Field(
        default="compatible", description="strict: every signed request, reads included, must carry a timestamp "
        "nonce (unix seconds or milliseconds) within the nonce window, which is then 60 s by default; this "
        "breaks clients that reuse one nonce for longer (the hosted API's shell example). compatible: any "
        "integer nonce, the window checked on state-changing calls only. See the README's authentication.",
    )
    nonce_window_seconds: int | None = Field(
        default=None, ge=10, description="Timestamp nonces further than this from the server's clock are refused; "
        "default: 900 (compatible), 60 (strict)."
    )
    nonce_retention_seconds: int = Field(
        default=86_400, ge=60, description="How long accepted state-changing requests are remembered against resends."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Runs a task gets before a lost worker fails it for good."
    )
    lease_seconds: float = Field(
        default=120.0, gt=0, description="A claimed task is taken up again when this runs out."
    )
    unknown_inputs: Literal["note", "refuse"] = Field(
        default="note", description="A Run sending inputs its tool does not take: run it and name them in "
        "debugoutput (note), or refuse it (refuse).",
    )
    callback_allowlist: str = Field(
        default="", description="Comma-separated hosts or CIDR ranges callbacks may reach though not public."
    )
    callback_max_attempts: int = Field(default=10, ge=1, le=50)
    callback_backoff_seconds: float = Field(
        default=30.0, gt=0, le=86_400, description="Wait after the first failed attempt; doubles after each, up to "
        "a day (10 attempts: ~4 h).",
    )
    callback_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120,
        description="Whole time one callback attempt may take: connecting, sending and the answer's headers.",
    )
    callback_per_origin: int = Field(
        default=2, ge=1, le=8, description="Callbacks in flight at once to one receiver (scheme, host and port)."
    )
    input_max_bytes: int = Field(default=20_000_000, ge=10_000, description="Largest input image file.")
    input_max_pixels: int = Field(
        default=25_000_000, ge=10_000, description="Most pixels an input image may have (decompression-bomb guard)."
    )
    input_timeout_seconds: float = Field(default=15.0, gt=0, le=120, description="Time to fetch an input URL.")
    lora_dir: Path | None = Field(
        default=None, description="The server's LoRA library: a folder of .safetensors adapters (diffusers, kohya "
        "or XLabs keys), offered by name as selectedLoraModel on the LoRA tools.",
    )
    lora_max_bytes: int = Field(
        default=512_000_000, ge=0, description="Largest LoRA adapter a project may upload (File/Upload) or a Run "
        "may name by URL. 0: none.",
    )
    lora_fetch_seconds: float = Field(default=300.0, gt=0, le=3600, description="Time a worker may take to fetch "
                                      "an adapter by URL.")
    lora_cache_dir: Path | None = Field(
        default=None, description="Where a worker keeps adapters it fetched or read, by content digest; default: "
        "loras/ in the data folder.",
    )
    lora_cache_dir_mb: int = Field(
        default=10_240, ge=0, description="The most disk (MiB) the adapters in lora_cache_dir may take; the least "
        "recently used are deleted beyond it (fetched or copied again when a task names them), never one used in "
        "the last two minutes. 0: no bound.",
    )
    worker_kinds: str = Field(
        default="", description='The kinds of task this process\'s workers take, comma-separated ("train" or '
        '"text-to-image,edit,image-to-image,upscale"); empty: all. In a fleet, training workers take "train" and '
        "the others the rest, so an hour of training never holds up a drawing.",
    )
    training_max_images: int = Field(default=1000, ge=1, description="Pictures one training may take.")
    training_max_steps: int = Field(default=20_000, ge=1, description="Steps one training may ask for.")
    archive_max_bytes: int = Field(
        default=1_000_000_000, ge=1_000_000, description="What a ZIP archive sent to File/Upload may unpack to; its "
        "pictures and .txt captions become the folder's files (a training set in one request).",
    )
    upload_quota_bytes: int = Field(
        default=1 << 30, ge=0, description="Bytes of File/Upload files one project may keep (1 GiB); an upload "
        "beyond is refused until some are deleted (File/Delete) or expire. 0: no limit.",
    )
    upload_expiry_seconds: int = Field(
        default=0, ge=0, description="Uploaded files older than this are deleted, with their records, by the "
        "janitor on its next pass. 0: kept until deleted.",
    )
    safety_terms_dir: Path | None = Field(
        default=None, description="Folder of prompt term lists (<category>.txt); default: the shipped lists."
    )
    safety_text_model: str | None = Field(
        default=None, description="A transformers text-classification model for prompts (folder or hub id)."
    )
    safety_image_model: str | None = Field(
        default=None, description="A transformers image-classification model for images, e.g. "
        "Falconsai/nsfw_image_detection.",
    )
    safety_image_backend: Literal["transformers", "nudenet"] = Field(
        default="transformers", description="nudenet: NudeNet's detector instead (pip install nudenet; AGPL-3.0)."
    )
    safety_unsafe_labels: str = Field(
        default="nsfw,porn,hentai,sexy,unsafe,toxic,severe_toxic,obscene,threat,identity_hate,"
        "FEMALE_GENITALIA_EXPOSED,MALE_GENITALIA_EXPOSED,FEMALE_BREAST_EXPOSED,BUTTOCKS_EXPOSED,ANUS_EXPOSED",
        description="Classifier labels that mean unsafe, comma-separated.",
    )
    upsampler_url: str | None = Field(
        default=None, description="An OpenAI-compatible API's base URL, ending in /v1, for promptUpsampling."
    )
    upsampler_model: str = Field(default="", description="The model name the upsampler URL serves.")
    upsampler_api_key: SecretStr = Field(default=SecretStr(""), description="Bearer token for the upsampler URL.")
    upsampler_local: str | None = Field(
        default=None, description="A transformers causal LM (folder or hub id) run in process for promptUpsampling."
    )
    upsampler_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    upsampler_fallback: bool = Field(
        default=False, description="When upsampling fails, generate from the prompt as given instead of failing."
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per line (time, level, logger, message, task_id...)."
    )

    @model_validator(mode="after")
    def _retention_covers_window(self) -> Settings:
        # a nonce up to a window ahead of the clock stays acceptable for two windows after it is spent
        if self.nonce_retention_seconds < 2 * self.resolved_nonce_window_seconds:
            raise ValueError("nonce_retention_seconds must be at least twice nonce_window_seconds: a request "
                             "forgotten while its nonce is still in the window could be replayed (a nonce may "
                             "be up to a window ahead of the server's clock)")
        return self

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @property
    def worker_kind_set(self) -> frozenset[str]:
        """The kinds of :attr:`worker_kinds`; empty: all."""
        return frozenset(kind.strip() for kind in self.worker_kinds.split(",") if kind.strip())

    def works_on(self, kind: str) -> bool:
        """Whether this process's workers take tasks of models of ``kind``."""
        return not self.worker_kind_set or kind in self.worker_kind_set

    @field_validator("worker_kinds")
    @classmethod
    def _known_kinds(cls, value: str) -> str:
        known = ("text-to-image", "edit", "image-to-image", "upscale", "train")
        unknown = [kind.strip() for kind in value.split(",") if kind.strip() and kind.strip() not in known]
        if unknown:
            raise ValueError(f"unknown kind {unknown[0]!r}: choose from {', '.join(known)}")
        return value

    @property
    def device_list(self) -> list[str]:
        names = [name.strip() for name in self.devices.split(",") if name.strip()]
        return names or ["auto"]

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("FLUXHOST_STORAGE=s3 needs FLUXHOST_S3_BUCKET")
        return self

    @model_validator(mode="after")
    def _cache_apart_from_library(self) -> Settings:
        library, cache = self.lora_dir, self.lora_cache_dir or self.data_dir / "loras"
        if library is not None and library.resolve() == cache.resolve():
            raise ValueError("lora_cache_dir must not be lora_dir: the cache deletes its least recently used "
                             "adapters, and would delete the library's")
        return self

    @model_validator(mode="after")
    def _one_worker_per_device(self) -> Settings:
        names = self.device_list
        if len(set(names)) != len(names):
            raise ValueError("devices must not repeat: two engines on one device fight over its memory")
        return self

    @property
    def resolved_nonce_window_seconds(self) -> int:
        if self.nonce_window_seconds is not None:
            return self.nonce_window_seconds
        return 60 if self.nonce_mode == "strict" else 900

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'fluxhost.db').resolve()}"

    @property
    def resolved_api_threads(self) -> int:
        """With SQLite a query is a few tens of microseconds of interpreter time and writes take
        turns anyway. With the worker in the API's process, each thread past the first only takes
        the GIL from its generations; without it, a second thread runs a Run's statements while
        the first waits on SQLite or for the GIL: 1.2x the Runs/s at 32 clients, 0.93x the CPU per
        task (``bench/serve_load.py --against``; four threads did no better than one). A server
        across the network makes queries wait, and threads help."""
        if self.api_threads is not None:
            return self.api_threads
        if not self.resolved_database_url.startswith("sqlite"):
            return 8
        worker_in_process = self.worker_concurrency > 0 and not self.worker_process and not self.broker_url
        return 1 if worker_in_process else 2

    @property
    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def resolved_events_url(self) -> str | None:
        if self.events_url:
            return self.events_url
        broker = self.broker_url or ""
        return broker if broker.startswith(("redis://", "rediss://")) else None

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"


def settings_problems(error: BaseException) -> list[str]:
    """One line for each setting ``error`` could not read (the setting, its value, what is
    allowed); none when ``error`` is not about the settings."""
    if isinstance(error, SettingsError):
        field = re.search(r'field "(\w+)"', str(error))
        name = f"FLUXHOST_{field.group(1).upper()}" if field else "A FLUXHOST_ setting"
        cause = error.__cause__
        if isinstance(cause, json.JSONDecodeError):
            return [f"{name} is not valid JSON: {cause.msg} at line {cause.lineno}, column {cause.colno} "
                    f"(character {cause.pos}): ...{cause.doc[max(0, cause.pos - 20):cause.pos + 20]!r}..."]
        return [f"{name} could not be read: {cause or error}"]
    if isinstance(error, ValidationError) and error.title == Settings.__name__:
        return [_problem(detail) for detail in error.errors()]
    return []


def _problem(detail: Any) -> str:
    """``FLUXHOST_PORT='abc': Input should be a valid integer...``, and for an option of the models
    table ``FLUXHOST_MODELS['owner/project'].stepz=3: ...``."""
    first, *rest = (str(part) for part in detail["loc"])
    where = f"FLUXHOST_{first.upper()}"
    if first == "models" and rest:
        where += f"[{rest[0]!r}]" + "".join(f".{part}" for part in rest[1:])
    message = detail["msg"]
    if detail["type"] == "extra_forbidden":
        options = [name for name, field in ModelSettings.model_fields.items() if not field.exclude]
        message = f"a model has no such option; its options: {', '.join(options)}"
    value = repr(detail.get("input"))
    return f"{where}={value if len(value) <= 80 else value[:77] + '...'}: {message}"
