"""The LoRA adapters loaded into one diffusers pipeline: read from local .safetensors files with
diffusers' own loader (which converts the diffusers/PEFT, kohya and XLabs layouts), checked against
the model first, kept loaded while they are used, and switched per generation.

Two ways to keep them, chosen by whether the transformer is compiled:

- :class:`AdapterCache`: each adapter is its own named PEFT adapter; a generation activates its
  adapters at their weights (``set_adapters``) or, with none, disables LoRA, so the pipeline then
  computes exactly what it computes without any LoRA. The least recently used adapters are deleted
  (``delete_adapters``) beyond a count and a memory bound.
- :class:`HotswapSlots`: a compiled transformer recompiles whenever its LoRA layers, its active
  adapters or a float scale change. So adapters go into fixed *slots* (one per adapter of the
  request with the most adapters so far), always active; a new adapter replaces a slot's weights in
  place with diffusers' hotswap (``enable_lora_hotswap`` pads every slot to one rank and turns the
  scales into tensors; ``load_lora_weights(..., hotswap=True)`` copies the new weights in), and a
  weight, or an unused slot, is set by filling the scale tensors in place. Only a new slot, or an
  adapter hotswap cannot take (layers the slot's first adapter did not have, text-encoder layers),
  reloads the slot and recompiles once; a rank above :data:`HOTSWAP_RANK` recompiles too, or is
  refused where it would be loaded afresh (diffusers cannot pad a slot down to it). The count and
  memory bounds do not apply here: the slots are what stays loaded.

Adapters with CLIP text-encoder layers change prompt encodings: :meth:`text_encoder_key` names
those, for the prompt cache's key.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

import torch
from diffusers import DiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError, safe_open

from fluxhost.engines.base import Adapter

log = logging.getLogger(__name__)

HOTSWAP_RANK = 128
"""The rank every slot of a compiled model is padded to: adapters up to it swap without recompiling."""

_LORA_KEY = re.compile(r"^(?P<component>[a-z_0-9]+)\.(?P<module>.+)\.(?P<part>lora_A|lora_B|lora\.down|lora\.up|"
                       r"lora_linear_layer\.down|lora_linear_layer\.up)\.weight$")
_LOADER_FAILURES = (ValueError, KeyError, IndexError, AssertionError, RuntimeError, NotImplementedError, TypeError)


class AdapterRefused(ValueError):
    """The file is not a LoRA this model can take; the message says why, and the pipeline is as it was."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _active(adapters: Sequence[Adapter]) -> dict[str, float]:
    """Weight per digest, in the request's order: one adapter named twice applies at its summed weight
    (a LoRA's contribution is linear in its weight)."""
    weights: dict[str, float] = {}
    for adapter in adapters:
        weights[adapter.digest] = weights.get(adapter.digest, 0.0) + adapter.weight
    return weights


def _layer(component: object, path: str) -> torch.nn.Module | None:
    """The layer a LoRA key names, seen through any LoRA wrapper; CLIP keys may keep the
    ``text_model.`` prefix that transformers 5 dropped, as diffusers' loader allows."""
    if not isinstance(component, torch.nn.Module):
        return None
    for candidate in (path, path.removeprefix("text_model.")):
        try:
            module = component.get_submodule(candidate)
        except AttributeError:
            continue
        return getattr(module, "base_layer", module)
    return None


def check_adapter(pipeline: DiffusionPipeline, adapter: Adapter) -> None:
    """Raise :class:`AdapterRefused` unless ``adapter`` is a safetensors LoRA whose layers all exist
    in this pipeline with the LoRA's shapes. diffusers would otherwise read a pickle, skip a file
    that matches nothing in silence, or widen the model's own layers to a larger model's LoRA."""
    if not hasattr(pipeline, "load_lora_weights"):
        raise AdapterRefused(f"{type(pipeline).__name__} takes no LoRA adapters")
    try:
        with safe_open(adapter.path, framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise AdapterRefused(f"{_named(adapter)} is not a readable .safetensors file ({_first_line(error)})") from error
    try:
        state_dict = pipeline.lora_state_dict(adapter.path, use_safetensors=True)
    except _LOADER_FAILURES as error:
        raise AdapterRefused(f"{_named(adapter)} is not a LoRA in a layout diffusers reads for "
                             f"{type(pipeline).__name__} ({_first_line(error)})") from error
    if isinstance(state_dict, tuple):
        state_dict = state_dict[0]
    if not state_dict:
        raise AdapterRefused(f"{_named(adapter)} holds no LoRA weights")
    problems: list[str] = []
    for key, tensor in state_dict.items():
        match = _LORA_KEY.match(key)
        if match is None:
            if "lora" not in key:
                problems.append(f"{key} would overwrite the model's own weights")
            continue
        layer = _layer(getattr(pipeline, match["component"], None), match["module"])
        if layer is None or not hasattr(layer, "in_features"):
            problems.append(f"{match['component']} has no linear layer {match['module']}")
            continue
        down = match["part"].endswith(("A", "down"))
        expected = layer.in_features if down else layer.out_features
        if tensor.ndim != 2 or tensor.shape[1 if down else 0] != expected:
            problems.append(f"{key} has shape {tuple(tensor.shape)}, the layer {'takes' if down else 'gives'} "
                            f"{expected} features")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise AdapterRefused(f"{_named(adapter)} is not a LoRA for this model ({type(pipeline).__name__}): "
                             f"{'; '.join(problems[:3])}{more}")


def _named(adapter: Adapter) -> str:
    """How a refusal names an adapter: by its file's name, never the server's folders (a refusal
    reaches the task's debugerror, which its owner reads)."""
    return f"the adapter {PurePath(adapter.path).name}"


def _components_holding(pipeline: DiffusionPipeline, name: str) -> list[str]:
    return [component for component, names in pipeline.get_list_adapters().items() if name in names]


def _loaded_bytes(pipeline: DiffusionPipeline, name: str) -> int:
    marker = f".{name}."
    return sum(parameter.numel() * parameter.element_size()
               for component in _components_holding(pipeline, name)
               for parameter_name, parameter in getattr(pipeline, component).named_parameters()
               if marker in parameter_name)


def _load(pipeline: DiffusionPipeline, adapter: Adapter, name: str, hotswap: bool = False) -> None:
    """Load ``adapter`` as ``name``; on failure nothing of ``name`` is left unless it was hotswapped into."""
    try:
        pipeline.load_lora_weights(adapter.path, adapter_name=name, use_safetensors=True, hotswap=hotswap)
    except _LOADER_FAILURES as error:
        if not hotswap and _components_holding(pipeline, name):
            pipeline.delete_adapters(name)
        if isinstance(error, torch.OutOfMemoryError):  # the file may be fine: the device is full
            raise
        raise AdapterRefused(f"{_named(adapter)} could not be loaded as a LoRA ({_first_line(error)})") from error
    if not _components_holding(pipeline, name):
        raise AdapterRefused(f"{_named(adapter)} has no layer this model has")


@dataclass
class _Loaded:
    name: str
    bytes: int
    text_encoder: bool


class AdapterCache:
    """Named adapters, least recently used deleted first beyond ``count`` adapters or ``megabytes``
    of their weights (the adapters of the generation being prepared are never deleted for it)."""

    def __init__(self, pipeline: DiffusionPipeline, count: int, megabytes: int):
        self.pipeline = pipeline
        self.count = count
        self.bytes = megabytes * 2**20
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self.loads = 0

    @property
    def loaded(self) -> list[str]:
        """Digests of the loaded adapters, least recently used first."""
        return list(self._loaded)

    def activate(self, adapters: Sequence[Adapter]) -> None:
        """Make ``adapters`` (and only they) apply to the next pipeline call."""
        weights = _active(adapters)
        for adapter in adapters:
            self._ensure(adapter)
        self._evict(keep=weights.keys())
        if not weights:
            if self._loaded:
                self.pipeline.disable_lora()
            return
        self.pipeline.enable_lora()
        self.pipeline.set_adapters([self._loaded[digest].name for digest in weights], list(weights.values()))

    def text_encoder_key(self, adapters: Sequence[Adapter]) -> tuple[tuple[str, float], ...]:
        """The loaded adapters among ``adapters`` that change what the text encoder computes."""
        return tuple((digest, weight) for digest, weight in _active(adapters).items()
                     if digest in self._loaded and self._loaded[digest].text_encoder)

    def forget(self, digest: str) -> None:
        """Unload an adapter now (one that will not be asked for again: a training's sample)."""
        if digest in self._loaded:
            self.pipeline.delete_adapters(self._loaded.pop(digest).name)

    def _ensure(self, adapter: Adapter) -> None:
        if adapter.digest in self._loaded:
            self._loaded.move_to_end(adapter.digest)
            return
        check_adapter(self.pipeline, adapter)
        name = f"lora_{adapter.digest[:16]}"
        _load(self.pipeline, adapter, name)
        self.loads += 1
        self._loaded[adapter.digest] = _Loaded(name, _loaded_bytes(self.pipeline, name),
                                               "text_encoder" in _components_holding(self.pipeline, name))
        log.info("loaded LoRA %s (%s, %.1f MiB)", adapter.path, adapter.digest[:12],
                 self._loaded[adapter.digest].bytes / 2**20)

    def _evict(self, keep) -> None:
        def over() -> bool:
            return (len(self._loaded) > self.count
                    or sum(loaded.bytes for loaded in self._loaded.values()) > self.bytes)

        for digest in list(self._loaded):
            if not over():
                return
            if digest not in keep:
                self.pipeline.delete_adapters(self._loaded.pop(digest).name)


@dataclass
class _Slot:
    name: str
    digest: str | None = None  # None: empty, or holding weights no request may use
    text_encoder: bool = False
    base_scales: dict[torch.nn.Module, float] = field(default_factory=dict)


class HotswapSlots:
    """Adapters of a compiled transformer, swapped into fixed slots (see the module's docstring)."""

    def __init__(self, pipeline: DiffusionPipeline):
        self.pipeline = pipeline
        self._slots: list[_Slot] = []
        self.loads = 0

    @property
    def loaded(self) -> list[str]:
        return [slot.digest for slot in self._slots if slot.digest is not None]

    def activate(self, adapters: Sequence[Adapter]) -> None:
        weights = _active(adapters)
        by_digest = {adapter.digest: adapter for adapter in adapters}
        placed = {slot.digest: slot for slot in self._slots if slot.digest in weights}
        free = [slot for slot in self._slots if slot.digest not in weights]
        for digest in weights:
            if digest not in placed:
                slot = free.pop(0) if free else self._new_slot()
                self._fill(slot, by_digest[digest])
                placed[digest] = slot
        for slot in self._slots:
            self._scale(slot, weights.get(slot.digest, 0.0) if slot.digest is not None else 0.0)

    def text_encoder_key(self, adapters: Sequence[Adapter]) -> tuple[tuple[str, float], ...]:
        with_text = {slot.digest for slot in self._slots if slot.text_encoder}
        return tuple((digest, weight) for digest, weight in _active(adapters).items() if digest in with_text)

    def _new_slot(self) -> _Slot:
        slot = _Slot(f"slot_{len(self._slots)}")
        self._slots.append(slot)
        return slot

    def _fill(self, slot: _Slot, adapter: Adapter) -> None:
        """Put ``adapter`` in ``slot``: hotswapped where it can be, else loaded afresh (a recompile).
        A slot that fails to take it is left empty, and applies nothing until it is filled again."""
        check_adapter(self.pipeline, adapter)
        occupied = bool(_components_holding(self.pipeline, slot.name))
        slot.digest, slot.base_scales = None, {}
        if occupied and not slot.text_encoder:  # diffusers cannot hotswap text-encoder layers
            try:
                _load(self.pipeline, adapter, slot.name, hotswap=True)
                self._filled(slot, adapter)
                return
            except AdapterRefused as refusal:
                log.info("LoRA %s does not hotswap into %s (%s): the slot is reloaded, which recompiles",
                         adapter.digest[:12], slot.name, refusal)
        if occupied:
            self.pipeline.delete_adapters(slot.name)
        self.pipeline.enable_lora_hotswap(target_rank=HOTSWAP_RANK, check_compiled="ignore")
        _load(self.pipeline, adapter, slot.name)
        names = [other.name for other in self._slots]
        for component in ("transformer", "text_encoder"):  # every slot active in every call
            model = getattr(self.pipeline, component, None)
            for module in model.modules() if model is not None else ():
                if isinstance(module, BaseTunerLayer):
                    module.set_adapter([name for name in names if name in module.scaling], inference_mode=True)
        self._filled(slot, adapter)

    def _filled(self, slot: _Slot, adapter: Adapter) -> None:
        self.loads += 1
        slot.digest = adapter.digest
        slot.text_encoder = "text_encoder" in _components_holding(self.pipeline, slot.name)
        slot.base_scales = {module: float(module.scaling[slot.name])
                            for component in _components_holding(self.pipeline, slot.name)
                            for module in getattr(self.pipeline, component).modules()
                            if slot.name in getattr(module, "scaling", {})}

    def _scale(self, slot: _Slot, weight: float) -> None:
        """The slot's weight, set in place: a scale tensor keeps the compiled graph; a float (the
        text encoder's, not compiled) is simply replaced."""
        for module, base in slot.base_scales.items():
            scale = module.scaling[slot.name]
            if isinstance(scale, torch.Tensor):
                scale.fill_(base * weight)
            else:
                module.scaling[slot.name] = base * weight


def adapter_store(pipeline: DiffusionPipeline, *, compiled: bool, count: int,
                  megabytes: int) -> AdapterCache | HotswapSlots:
    """The adapter keeping that suits the pipeline: hotswap slots when its transformer is compiled."""
    return HotswapSlots(pipeline) if compiled else AdapterCache(pipeline, count, megabytes)
