"""Where a DMoERM's adapters live: adapter names, the PEFT-wrapped backbone(s), and which backbone runs what.

Default layout: one frozen base (``backbone``, a ``PeftModel``) carrying every adapter: ``router``,
``<category>__task`` and ``<category>__<capability>``. With ``task_mode="full"`` (the paper's layout) each category
also has its own full base copy (``category_backbones[category]``) carrying that category's experts, and the shared
base keeps only the router. Mixed into [`DMoERMForSequenceClassification`].
"""

from __future__ import annotations

import copy
import inspect

from torch import nn
from transformers import PreTrainedModel

from .adapter_injection import wrap_with_adapters
from .backbone import detect_lora_target_modules
from .configuration_dmoerm import slugify
from .training_stages import ROUTER_ADAPTER
from .trunk import check_trunk_split, validate_trunk_layers


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
                    self._slug(c): self._wrap_with_adapters(copies[self._slug(c)], self.expert_adapter_names(c), lora_config)
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

