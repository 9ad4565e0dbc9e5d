"""LoRA adapters of a DMoERM: where they live ([`AdapterLayoutMixin`]) and how they are injected ([`wrap_with_adapters`]).

Where a DMoERM's adapters live: adapter names, the PEFT-wrapped backbone(s), and which backbone runs what.

Default layout: one frozen base (``backbone``, a ``PeftModel``) carrying every adapter: ``router``,
``<category>__task`` and ``<category>__<capability>``. With ``task_mode="full"`` (the paper's layout) each category
also has its own full base copy (``category_backbones[category]``) carrying that category's experts, and the shared
base keeps only the router. Mixed into [`DMoERMForSequenceClassification`].

Wrap a backbone with many LoRA adapters at once: the same model as PEFT's ``add_adapter`` loop, built faster.

A DMoERM carries one LoRA adapter per router/task/expert (31 for 5 categories x 5 capabilities). PEFT's
``add_adapter`` runs a whole-model surgery pass per adapter on a model that grows with each one, so the loop is
quadratic in the number of adapters. [`wrap_with_adapters`] lets ``get_peft_model`` place the first adapter (every
LoraConfig field honoured), creates the others on exactly the modules it targeted with the tuner's
``_create_and_replace`` (in the loop's order, on one torch thread), then does once what PEFT does after each
injection (dtype up-cast, ``set_adapter``, ``_mark_only_adapters_as_trainable``). Same parameters, same
``peft_config``, same active adapter, bit-identical initial weights for the same seed. Configurations it is not
known to reproduce ([`fast_path_unsupported_reason`]) and PEFT versions without those internals fall back to the
loop, with the reason logged. How and why, and the timings (``benchmarks/adapter_build.py``):
docs/adapter_injection.md; summary in docs/benchmarks.md, "Model: parameters and peak memory".

Example:
    >>> from peft import LoraConfig
    >>> from transformers import AutoModel
    >>> from dmoerm_trl.models.dmoerm._lora_injection import wrap_with_adapters
    >>> backbone = AutoModel.from_pretrained("path/to/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> config = LoraConfig(r=32, lora_alpha=32, target_modules=["q_proj", "v_proj"])
    >>> names = ["router", "chitchat__task", "chitchat__empathy"]
    >>> model = wrap_with_adapters(backbone, names, config)  # doctest: +SKIP
    >>> sorted(model.peft_config), model.active_adapter  # doctest: +SKIP
    (['chitchat__empathy', 'chitchat__task', 'router'], 'router')
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import logging
import warnings
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedModel

from ..._compat import (
    peft_check_new_adapter_config,
    peft_create_and_replace,
    peft_lora_api_missing,
    peft_mark_only_adapters_as_trainable,
)
from ._backbone import detect_lora_target_modules
from ._trunk import check_trunk_split, validate_trunk_layers
from .configuration_dmoerm import slugify
from .training_stages import ROUTER_ADAPTER

logger = logging.getLogger(__name__)

# LoraConfig.init_lora_weights values whose init is local to each layer (no data, no base-weight rewrite).
_LOCAL_INITS = (True, False, "gaussian")
# LoraConfig fields that add modules or steps beyond per-layer LoRA weights (any truthy value -> PEFT's loop).
_UNSUPPORTED_FIELDS = (
    "modules_to_save",
    "trainable_token_indices",
    "target_parameters",
    "layer_replication",
    "ensure_weight_tying",
    "use_qalora",
    "megatron_config",
)
# Low-precision float dtypes PEFT up-casts adapter weights from (peft.tuners.tuners_utils.cast_adapter_dtype).
_UPCAST_DTYPE_NAMES = (
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
)


def fast_path_unsupported_reason(lora_config, backbone=None) -> str | None:
    """Why [`wrap_with_adapters`] would use PEFT's ``add_adapter`` loop for this config/backbone (``None``: fast path).

    The fast path covers plain LoRA on any target modules: ``target_modules`` (list, regex, ``"all-linear"`` or
    ``None``), ``exclude_modules``, ``layers_to_transform``, ``layers_pattern``, ``r``, ``lora_alpha``,
    ``lora_dropout``, ``use_rslora``, ``rank_pattern``, ``alpha_pattern``, ``lora_bias``, ``inference_mode`` and
    ``init_lora_weights`` in (True, False, "gaussian"). Everything else (DoRA and other LoRA variants, data-driven
    or base-rewriting inits, ``modules_to_save``, trainable tokens, ``target_parameters``, ``layer_replication``,
    weight tying, quantized backbones) is left to PEFT's own loop.

    Example:
        >>> from peft import LoraConfig
        >>> fast_path_unsupported_reason(LoraConfig(target_modules=["q_proj"])) is None
        True
        >>> fast_path_unsupported_reason(LoraConfig(target_modules=["q_proj"], use_dora=True))
        'LoraConfig.use_dora=True (a LoRA variant)'
    """
    missing = peft_lora_api_missing()
    if missing is not None:
        return missing
    from peft import LoraConfig

    if not isinstance(lora_config, LoraConfig):
        return f"the config is a {type(lora_config).__name__}, not a LoraConfig"
    if lora_config.init_lora_weights not in _LOCAL_INITS:
        return f"LoraConfig.init_lora_weights={lora_config.init_lora_weights!r}"
    if lora_config.task_type is not None:
        return f"LoraConfig.task_type={lora_config.task_type!r} (task heads are saved per adapter)"
    for field in dataclasses.fields(lora_config):
        if field.metadata.get("is_lora_variant") and getattr(lora_config, field.name):
            return f"LoraConfig.{field.name}={getattr(lora_config, field.name)!r} (a LoRA variant)"
    for field in _UNSUPPORTED_FIELDS:
        if getattr(lora_config, field, None):
            return f"LoraConfig.{field}={getattr(lora_config, field)!r}"
    if backbone is not None:
        if getattr(backbone, "hf_quantizer", None) is not None or getattr(backbone, "is_quantized", False):
            return "the backbone is quantized"
        if any(getattr(backbone, flag, False) for flag in ("is_loaded_in_8bit", "is_loaded_in_4bit")):
            return "the backbone is loaded in 8/4 bit"
    return None


def _add_adapters_with_peft_loop(peft_model, names: Sequence[str], lora_config) -> None:
    for name in names:
        peft_model.add_adapter(name, lora_config)


def wrap_with_adapters(backbone, names: list[str], lora_config, *, fast: bool = True):
    """``backbone`` as a ``PeftModel`` carrying the LoRA adapters ``names``, all with ``lora_config``.

    Equal to ``get_peft_model(backbone, lora_config, adapter_name=names[0])`` followed by
    ``add_adapter(name, lora_config)`` for each further name (same parameters, ``requires_grad``, configs, active
    adapter ``names[0]``, and, for the same seed, the same initial weights), in a fraction of the time. With
    ``fast=False``, or when [`fast_path_unsupported_reason`] gives a reason (logged), it runs that loop.

    Example:
        >>> from peft import LoraConfig
        >>> from transformers import LlamaConfig, LlamaModel
        >>> backbone = LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128))
        >>> model = wrap_with_adapters(backbone, ["router", "a", "b"], LoraConfig(r=4, target_modules=["q_proj"]))
        >>> list(model.peft_config), model.active_adapter
        (['router', 'a', 'b'], 'router')
    """
    from peft import get_peft_model

    names = list(names)
    if not names:
        raise ValueError("wrap_with_adapters needs at least one adapter name (got an empty list)")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"adapter names must be unique; repeated: {duplicates}")

    reason = "fast=False was passed" if not fast else fast_path_unsupported_reason(lora_config, backbone)
    with warnings.catch_warnings():
        # PEFT asks transformers' deprecated `is_gradient_checkpointing`; not actionable for our users.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(backbone, lora_config, adapter_name=names[0])
        if reason is None:
            reason = _add_adapters_in_one_pass(peft_model, names[1:], lora_config)
        if reason is not None:
            if fast and len(names) > 1:
                logger.warning("wrap_with_adapters: using PEFT's add_adapter loop because %s", reason)
            _add_adapters_with_peft_loop(peft_model, names[1:], lora_config)
    return peft_model


def _add_adapters_in_one_pass(peft_model, names: Sequence[str], lora_config) -> str | None:
    """Add ``names`` to the LoRA layers of the first adapter; ``None`` when done, else why nothing was done."""
    import torch
    from peft.tuners.lora import LoraLayer, LoraModel
    from peft.utils import PeftType

    if not names:
        return None
    tuner = peft_model.base_model
    if type(tuner) is not LoraModel:
        return f"the tuner is a {type(tuner).__name__}, not peft's LoraModel"
    first = peft_model.active_adapter
    if getattr(tuner, "targeted_parameter_names", None):
        return "the first adapter targets parameters (target_parameters)"
    model = tuner.model
    targets = []
    for key in tuner.targeted_module_names:
        layer = model.get_submodule(key)
        if not isinstance(layer, LoraLayer) or first not in layer.r:
            return f"targeted module {key!r} is a {type(layer).__name__} without the first adapter"
        parent_key, _, target_name = key.rpartition(".")
        targets.append((key, model.get_submodule(parent_key), target_name, layer))
    if not targets:
        return "the first adapter targets no module"
    target_ids = {id(layer) for *_, layer in targets}
    if any(isinstance(module, LoraLayer) and id(module) not in target_ids for module in model.modules()):
        return "the backbone has LoRA layers the first adapter does not target"
    if lora_config.peft_type != PeftType.LORA or any(name in peft_model.peft_config for name in names):
        return "an adapter name already exists or the config is not LoRA"

    low_precision = {getattr(torch, name) for name in _UPCAST_DTYPE_NAMES if hasattr(torch, name)}
    spares = {}  # empty per-adapter containers, reused by _create_in_isolation
    with _one_torch_thread():
        _add_each_adapter(peft_model, tuner, targets, names, lora_config, low_precision, spares)

    # What inject_adapter does after each adapter, once: only the active adapter trainable (unless inference_mode).
    tuner.set_adapter(tuner.active_adapters, inference_mode=lora_config.inference_mode)
    peft_mark_only_adapters_as_trainable(tuner, model)
    return None


@contextlib.contextmanager
def _one_torch_thread():
    """Run torch ops on one intra-op thread meanwhile (restored after).

    Building adapters is thousands of ops on small tensors (init, dtype casts, zeroing): splitting each over threads
    gains nothing, and when another process holds a core every op waits for the busy thread (the effect:
    ``benchmarks/adapter_build.py --with-loop-1thread``, docs/adapter_injection.md). Results do not depend on it
    (CPU random fills are serial; casts and fills are element-wise).
    """
    import torch

    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _add_each_adapter(peft_model, tuner, targets, names, lora_config, low_precision, spares) -> None:
    from peft.functional import cast_adapter_dtype

    for name in names:
        if name in "lora_":  # the warning PeftModel.add_adapter gives
            warnings.warn(
                f"Adapter name '{name}' should not be contained in the prefix 'lora_'. "
                "This may lead to reinitialization of the adapter weights during loading."
            )
        peft_model.peft_config[name] = lora_config
        try:
            peft_check_new_adapter_config(tuner, lora_config)
            # Adapter-major order, as the loop: the same seed gives the same initial weights.
            for key, parent, target_name, layer in targets:
                _create_in_isolation(tuner, lora_config, name, key, parent, target_name, layer, spares)
        except Exception:
            # as PeftModel.add_adapter: roll back this adapter's config (its layers stay half-built, as in PEFT)
            del peft_model.peft_config[name]
            raise
        # PeftModel.add_adapter(autocast_adapter_dtype=True): fp16/bf16/fp8 adapter weights -> fp32, per layer.
        for _, _, _, layer in targets:
            if any(p.dtype in low_precision for p in _adapter_parameters(layer, name)):
                cast_adapter_dtype(layer, adapter_name=name, autocast_adapter_dtype=True)


def _adapter_parameters(layer, name: str):
    import torch

    for attribute in layer.adapter_layer_names:
        container = getattr(layer, attribute, None)
        if container is not None and name in container:
            entry = container[name]
            yield from ([entry] if isinstance(entry, torch.Tensor) else entry.parameters())


def _create_in_isolation(
    tuner, lora_config, name: str, key: str, parent, target_name: str, layer, spares: dict
) -> None:
    """``tuner._create_and_replace`` for one more adapter on an existing LoRA layer, in time independent of how many
    adapters the layer already has.

    ``LoraLayer.update_layer`` ends by re-activating the active adapter over *every* adapter of the layer and scans
    every adapter's parameters to move the new one to the base layer's device: quadratic over a loop of adapters.
    While it runs, the layer's per-adapter module containers (``lora_A``, ``lora_B``, ``lora_dropout``, ...) are
    swapped for empty ones of the same type (``spares``, reused), so it only sees the new adapter; the new entries
    are then appended to the real containers, in the order the loop would have added them.
    """
    from torch import nn

    modules = layer._modules
    stashed = {}
    for attribute in (*layer.adapter_layer_names, *layer.other_param_names):
        container = modules.get(attribute)
        if type(container) in (nn.ModuleDict, nn.ParameterDict):
            stashed[attribute] = container
            spare = spares.get((attribute, type(container)))
            if spare is None:
                spare = spares[(attribute, type(container))] = type(container)()
            modules[attribute] = spare
    try:
        peft_create_and_replace(tuner, lora_config, name, layer, target_name, parent, key)
    finally:
        for attribute, container in stashed.items():
            spare = modules[attribute]
            for entry_name, entry in spare.items():
                container[entry_name] = entry
            spare.clear()
            modules[attribute] = container


class AdapterLayoutMixin:
    """Adapter names and the backbone(s) that carry them."""

    @staticmethod
    def _slug(name: str) -> str:
        return slugify(name)

    def adapter_name(self, category: str, capability: str | None = None) -> str:
        """PEFT adapter name of a category's task adapter (``capability=None``) or of one capability expert."""
        self.config.category_id(category)
        if capability is None:
            return f"{self._slug(category)}__task"
        if capability not in self.config.categories[category]:
            raise ValueError(
                f"unknown capability {capability!r} for category {category!r}; "
                f"its capabilities are {self.config.categories[category]}"
            )
        return f"{self._slug(category)}__{self._slug(capability)}"

    def expert_adapter_names(self, category: str) -> list[str]:
        return [self.adapter_name(category, cap) for cap in self.config.categories[category]]

    @property
    def full_task_mode(self) -> bool:
        """True for ``task_mode="full"``: one fully fine-tuned base copy per category (the paper's layout)."""
        return self.config.task_mode == "full"

    def all_adapter_names(self) -> list[str]:
        names = [ROUTER_ADAPTER] if self.config.router_mode == "lora" else []
        for category in self.config.categories:
            if not self.full_task_mode:
                names.append(self.adapter_name(category))
            names.extend(self.expert_adapter_names(category))
        return names

    def backbone_for(self, category: str | None):
        """The (PEFT-wrapped) backbone that runs ``category``'s adapters: its own base copy with
        ``task_mode="full"``, otherwise the shared one (also for ``category=None``, the router)."""
        if category is not None and self.full_task_mode:
            return self.category_backbones[self._slug(category)]
        return self.backbone

    def adapter_owner(self, adapter: str) -> tuple[str, object]:
        """``(state_dict prefix, PEFT model)`` holding the adapter called ``adapter`` (used to save and load it)."""
        if self.full_task_mode:
            for category in self.config.categories:
                if adapter in self.expert_adapter_names(category):
                    slug = self._slug(category)
                    return f"category_backbones.{slug}.", self.category_backbones[slug]
        return "backbone.", self.backbone

    def all_backbones(self) -> list:
        """Every backbone of the model: the shared one, then (``task_mode="full"``) the per-category copies."""
        return [self.backbone, *(self.category_backbones.values() if self.full_task_mode else ())]

    def _lora_config(self, target_modules: list[str], layers_attribute: str = "", num_layers: int = 0):
        from peft import LoraConfig

        trunk = self.config.trunk_layers
        return LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=target_modules,
            bias="none",
            # With a shared trunk, adapters only in the layers above it.
            layers_to_transform=list(range(trunk, num_layers)) if trunk else None,
            layers_pattern=layers_attribute if trunk else None,
        )

    def _wrap_with_adapters(self, backbone: PreTrainedModel, names: list[str], lora_config):
        """``backbone`` as a PeftModel carrying the adapters ``names``; the plain backbone when there are none."""
        if not names:
            return backbone
        # The same PeftModel as get_peft_model + an add_adapter loop, in one pass (docs/adapter_injection.md).
        peft_backbone = wrap_with_adapters(backbone, names, lora_config)
        # PEFT's config records the base path so each adapter folder loads on its own.
        for peft_config in peft_backbone.peft_config.values():
            peft_config.base_model_name_or_path = self.config.base_model_name_or_path
        return peft_backbone

    def _attach_backbone(self, backbone: PreTrainedModel) -> None:
        target_modules = detect_lora_target_modules(backbone, self.config.lora_target_modules)
        self.config.lora_target_modules = target_modules
        lora_config = self._lora_config(
            target_modules, *validate_trunk_layers(backbone, self.config.trunk_layers, self.config.task_mode)
        )
        if self.full_task_mode:
            # The paper's layout: a full copy of the pretrained base per category (phase 1 fine-tunes it), carrying
            # that category's expert adapters; the shared base keeps only the router.
            copies = {self._slug(c): copy.deepcopy(backbone) for c in self.config.categories}
            self.category_backbones = nn.ModuleDict(
                {
                    self._slug(c): self._wrap_with_adapters(
                        copies[self._slug(c)], self.expert_adapter_names(c), lora_config
                    )
                    for c in self.config.categories
                }
            )
            shared_names = [ROUTER_ADAPTER] if self.config.router_mode == "lora" else []
        else:
            shared_names = self.all_adapter_names()
        self.backbone = self._wrap_with_adapters(backbone, shared_names, lora_config)
        forward_params = set(inspect.signature(backbone.forward).parameters)
        self._backbone_takes_position_ids = "position_ids" in forward_params
        self._backbone_takes_use_cache = "use_cache" in forward_params
        if self.config.trunk_layers:
            check_trunk_split(self)

    def num_parameters_by_part(self) -> dict[str, int]:
        """Parameter counts: ``base``, ``adapters``, ``heads``, ``total`` and ``trainable`` (stage-dependent).
        With ``task_mode="full"``, ``base`` counts the shared base and every category's copy."""
        counts = {"base": 0, "adapters": 0, "heads": 0, "trainable": 0}
        for name, parameter in self.named_parameters():
            in_backbone = name.startswith(("backbone.", "category_backbones."))
            part = "heads" if not in_backbone else ("adapters" if ".lora_" in name else "base")
            counts[part] += parameter.numel()
            counts["trainable"] += parameter.numel() if parameter.requires_grad else 0
        counts["total"] = counts["base"] + counts["adapters"] + counts["heads"]
        return counts
