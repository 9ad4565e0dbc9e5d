"""Training stages of a DMoERM: what one forward computes and which parameters train.

Each phase of the paper (router, task, capability experts, aggregator) trains one part on one adapter per forward,
so any Trainer (TRL's ``RewardTrainer`` for the reward phases) and gradient checkpointing work unchanged. Mixed into
[`DMoERMForSequenceClassification`], whose ``_stage_forward`` (in ``modeling_dmoerm.py``) is what a stage computes.
"""

from __future__ import annotations

import torch
from torch import nn

ROUTER_ADAPTER = "router"
STAGES = ("router", "task", "capability", "aggregator")


class TrainingStagesMixin:
    """``set_training_stage`` / ``init_experts_from_task`` and the stage forward of a DMoERM."""

    @property
    def training_stage(self) -> tuple[str | None, str | None, str | None]:
        """``(stage, category, capability)``; ``(None, None, None)`` is inference (router + experts + aggregator)."""
        return self._stage

    def set_training_stage(
        self, stage: str | None, category: str | None = None, capability: str | None = None
    ) -> list[str]:
        """Select what ``forward`` computes and which parameters train; returns the trainable parameter names.

        ``"router"``: router adapter (``router_mode="lora"``) + router head, or the head alone (``"linear"``,
        ``"trunk"``); ``logits`` = router logits ``(B, C)``.
        ``"task"``: the category's task adapter + task head, ``logits`` ``(B, 1)`` (phase 1); with
        ``task_mode="full"`` every weight of the category's base copy + task head (a full fine-tune, as in the paper).
        ``"capability"``: one expert adapter + its value head, ``logits`` ``(B, 1)`` (phase 2).
        ``"aggregator"``: only the category's aggregator MLP over frozen experts (phase 3).
        ``None``: inference; nothing trains.

        Example:
            >>> model.set_training_stage("capability", category="objective_qa", capability="logic")  # doctest: +SKIP
            ['backbone.base_model.model.layers.0.self_attn.q_proj.lora_A.objective_qa__logic.weight', ...]
        """
        if stage not in (None, *STAGES):
            raise ValueError(f"stage must be one of {STAGES} or None (inference), got {stage!r}")
        if stage in ("task", "capability", "aggregator"):
            if category is None:
                raise ValueError(f"stage {stage!r} needs category=, one of {self.config.category_names}")
            self.config.category_id(category)
        if stage == "capability":
            if capability is None:
                raise ValueError(f"stage 'capability' needs capability=, one of {self.config.categories[category]}")
            self.adapter_name(category, capability)
        if self.full_task_mode:
            # Adapter layers are switched off (persistently, so gradient checkpointing recomputes the same graph)
            # only on the copy that phase 1 fine-tunes. (Before resetting requires_grad: PEFT's enable marks the
            # active adapter trainable.)
            for slug, backbone in self.category_backbones.items():
                if stage == "task" and slug == self._slug(category):
                    backbone.base_model.disable_adapter_layers()
                else:
                    backbone.base_model.enable_adapter_layers()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        adapter = None
        if stage == "router":
            adapter = ROUTER_ADAPTER if self.config.router_mode == "lora" else None
            self.router_head.requires_grad_(True)
        elif stage == "task":
            self.task_heads[self._slug(category)].requires_grad_(True)
            if self.full_task_mode:
                # Phase 1 of the paper: all weights of the category's own base copy (its expert adapters stay off).
                for name, parameter in self.backbone_for(category).named_parameters():
                    if ".lora_" not in name:
                        parameter.requires_grad_(True)
            else:
                adapter = self.adapter_name(category)
        elif stage == "capability":
            adapter = self.adapter_name(category, capability)
            self.value_heads[adapter].requires_grad_(True)
        elif stage == "aggregator":
            self.aggregators[self._slug(category)].requires_grad_(True)
        if adapter is not None:
            # PEFT's set_adapter activates the adapter and makes exactly its LoRA weights trainable.
            self.backbone_for(category if stage != "router" else None).set_adapter(adapter)
        self._stage = (stage, category if stage not in (None, "router") else None, capability)
        self._stage_adapter = adapter
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def init_experts_from_task(self, category: str) -> None:
        """Phase-2 initialisation: copy the category's task adapter and task head into each of its experts.

        With ``task_mode="full"`` the phase-1 result is the category's base copy itself: the experts' LoRA ``B``
        matrices are zeroed (each expert starts as exactly the phase-1 model) and the task head is copied.
        """
        task = self.adapter_name(category)
        task_head = self.task_heads[self._slug(category)]
        with torch.no_grad():
            if self.full_task_mode:
                experts = set(self.expert_adapter_names(category))
                for module in self.backbone_for(category).modules():
                    weights = getattr(module, "lora_B", None)
                    if isinstance(weights, nn.ModuleDict):
                        for expert in experts & set(weights):
                            weights[expert].weight.zero_()
            for module in self.backbone.modules():
                for attr in ("lora_A", "lora_B"):
                    weights = getattr(module, attr, None)
                    if isinstance(weights, nn.ModuleDict) and task in weights:
                        for expert in self.expert_adapter_names(category):
                            weights[expert].load_state_dict(weights[task].state_dict())
            for expert in self.expert_adapter_names(category):
                self.value_heads[expert].load_state_dict(task_head.state_dict())
