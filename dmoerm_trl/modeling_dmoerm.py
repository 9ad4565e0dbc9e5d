"""DMoERM as a Hugging Face sequence-classification reward model.

Reading guide (top to bottom):

1. ``DMoERMForSequenceClassification.from_backbone`` loads a pretrained backbone and puts LoRA adapters on it:
   ``router`` (router_mode="lora"), per category ``<category>__task`` (phase 1) and ``<category>__<capability>``
   (one capability expert each, phase 2). Heads are plain registered modules: ``router_head`` (H -> C),
   ``task_heads[category]`` and ``value_heads[expert]`` (H -> 1), ``aggregators[category]`` (k*H -> A -> 1).
2. ``forward`` (inference): route on the prompt only (the tokens up to the chat template's last assistant-turn
   opener, ``prompt_boundary.py``) -> group the batch by category -> run each group's k experts (one mixed-adapter
   pass, or k passes: same numbers) -> value heads give ``capability_rewards``, the aggregator gives ``logits``.
3. ``set_training_stage`` selects what one forward computes and which parameters train (router, a task adapter,
   one expert, an aggregator), so that each phase is an ordinary Trainer run over one adapter per forward.
4. ``save_pretrained``/``from_pretrained``: config + one standard PEFT folder per adapter + a safetensors file of
   the heads; the base is referenced by id/path (or saved under ``base/`` with ``save_base=True``).

``task_mode="full"`` (the paper's layout, an option): every category gets its own full copy of the base
(``category_backbones[category]``), fully fine-tuned in phase 1 in place of a task adapter; the category's experts are
LoRA adapters on that copy, the router stays on the original base (``backbone``).
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from .adapter_layout import AdapterLayoutMixin
from .backbone import (
    BACKBONE_KWARGS,
    HUB_KWARGS,
    backbone_is_causal,
    check_load_kwargs,
    detect_pooling,
    load_pretrained_backbone,
)
from .base_reference import pinned_revision
from .configuration_dmoerm import DMoERMConfig
from .modeling_outputs import DMoERMOutput
from .prompt_boundary import PromptBoundaryError
from .reward_contract import BroadcastRewardScore, SequenceRewardView
from .routing import RoutingMixin
from .training_stages import ROUTER_ADAPTER, STAGES, TrainingStagesMixin  # noqa: F401 (re-exported)
from .trunk import layer_window

logger = logging.getLogger(__name__)


class CapabilityAggregator(nn.Module):
    """The inner MoE's combiner: ``Linear(k*H, A) -> PReLU -> Linear(A, 1)`` over concatenated expert features.

    Two sets of statistics travel with it (buffers: saved and loaded with the heads; identity until set, which is
    also what a model saved before they existed loads with):

    - ``feature_mean`` / ``feature_std`` ``(k*H,)``: the MLP reads ``(features - feature_mean) / feature_std``. Phase 3
      sets them from the category's training texts ([`set_feature_statistics`]): the experts' last hidden states
      share one dominant direction, far larger than their variation between texts (docs/training.md, "Phase 3"),
      which left the MLP barely able to move from its random start.
    - ``reward_mean`` / ``reward_std`` ``(1,)``: the calibration that puts every category on one scale (after phase
      3, [`set_reward_calibration`]): the calibrated reward is ``(raw - reward_mean) / reward_std``, mean 0 and std 1
      on the category's training texts. The pairwise loss cannot see a constant per category, so without it each
      category's reward has its own arbitrary offset.

    Example:
        >>> import torch
        >>> aggregator = CapabilityAggregator(num_experts=2, hidden_size=4, aggregator_hidden_size=8)
        >>> features = torch.randn(16, 8) * 3 + 50
        >>> aggregator.set_feature_statistics(features)
        >>> aggregator.set_reward_calibration(aggregator(features))
        >>> calibrated = aggregator(features, calibrated=True)
        >>> round(calibrated.mean().item(), 4) == 0.0, round(calibrated.std().item(), 4)
        (True, 1.0)
    """

    def __init__(self, num_experts: int, hidden_size: int, aggregator_hidden_size: int):
        super().__init__()
        self.num_experts = num_experts
        self.proj = nn.Linear(num_experts * hidden_size, aggregator_hidden_size)
        self.act = nn.PReLU()
        self.out = nn.Linear(aggregator_hidden_size, 1)
        self.register_buffer("feature_mean", torch.zeros(num_experts * hidden_size))
        self.register_buffer("feature_std", torch.ones(num_experts * hidden_size))
        self.register_buffer("reward_mean", torch.zeros(1))
        self.register_buffer("reward_std", torch.ones(1))

    def forward(self, expert_features: torch.Tensor, calibrated: bool = False) -> torch.Tensor:
        """``(N, 1)`` rewards of ``(N, k*H)`` features; ``calibrated=True`` applies the category's calibration."""
        normalized = (expert_features - self.feature_mean.to(expert_features.dtype)) / self.feature_std.to(
            expert_features.dtype
        )
        reward = self.out(self.act(self.proj(normalized)))
        if calibrated:
            reward = (reward - self.reward_mean.to(reward.dtype)) / self.reward_std.to(reward.dtype)
        return reward

    @torch.no_grad()
    def set_feature_statistics(self, features: torch.Tensor, min_std: float = 1e-4) -> None:
        """Standardise each input dimension by its mean and standard deviation over ``features`` ``(N, k*H)``
        (dimensions that hardly vary keep their scale: std floored at ``min_std``)."""
        features = features.detach().double()
        if features.dim() != 2 or features.shape[1] != self.feature_mean.numel() or features.shape[0] < 2:
            raise ValueError(
                f"feature statistics need at least 2 feature rows of size {self.feature_mean.numel()}, got shape "
                f"{tuple(features.shape)}"
            )
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp(min=min_std))

    @torch.no_grad()
    def set_reward_calibration(self, raw_rewards: torch.Tensor, min_std: float = 1e-6) -> None:
        """Store the mean and standard deviation of uncalibrated rewards (of the category's training texts), so that
        calibrated rewards of those texts have mean 0 and std 1."""
        raw_rewards = raw_rewards.detach().double().reshape(-1)
        if raw_rewards.numel() < 2 or not torch.isfinite(raw_rewards).all():
            raise ValueError(f"reward calibration needs at least 2 finite rewards, got {raw_rewards.numel()}")
        self.reward_mean.fill_(raw_rewards.mean().item())
        self.reward_std.fill_(max(raw_rewards.std().item(), min_std))

    @property
    def is_calibrated(self) -> bool:
        return bool(self.reward_mean.item() != 0.0 or self.reward_std.item() != 1.0)


class DMoERMPreTrainedModel(PreTrainedModel):
    config_class = DMoERMConfig
    # TRL PPO calls getattr(rm, rm.base_model_prefix)(...) then rm.score(...): see reward_contract.py.
    base_model_prefix = "reward_view"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class DMoERMForSequenceClassification(AdapterLayoutMixin, RoutingMixin, TrainingStagesMixin, DMoERMPreTrainedModel):
    """Double-layer mixture-of-experts reward model (arXiv 2403.01197) on one shared, frozen backbone.

    Example:
        >>> import dmoerm_trl, torch
        >>> from transformers import AutoTokenizer
        >>> model = dmoerm_trl.DMoERMForSequenceClassification.from_backbone(  # doctest: +SKIP
        ...     "HuggingFaceTB/SmolLM2-135M-Instruct",
        ...     categories={"objective_qa": ["correctness", "logic"], "chitchat": ["empathy", "fluency"]},
        ... )
        >>> tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
        >>> batch = tokenizer(["Q: 2+2? A: 4"], return_tensors="pt")  # doctest: +SKIP
        >>> out = model(**batch)  # doctest: +SKIP
        >>> out.logits.shape, out.capability_rewards.shape  # doctest: +SKIP
        (torch.Size([1, 1]), torch.Size([1, 2]))
    """

    def __init__(self, config: DMoERMConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if not config.categories:
            raise ValueError("DMoERMConfig.categories is empty; build the model with from_backbone(..., categories=)")
        if backbone is None:
            # Like every HF model's __init__, the architecture only (random weights). from_backbone() and
            # from_pretrained() load pretrained weights.
            backbone = AutoModel.from_config(config.get_backbone_config())
        hidden_size = config.hidden_size or backbone.config.hidden_size
        config.hidden_size = hidden_size
        if config.pooling is None:
            config.pooling = detect_pooling(backbone.config)
        aggregator_width = config.aggregator_hidden_size or hidden_size

        self.router_head = nn.Linear(hidden_size, config.num_categories)
        self.task_heads = nn.ModuleDict({self._slug(c): nn.Linear(hidden_size, 1) for c in config.categories})
        self.value_heads = nn.ModuleDict(
            {self.adapter_name(c, cap): nn.Linear(hidden_size, 1) for c, caps in config.categories.items() for cap in caps}
        )
        self.aggregators = nn.ModuleDict(
            {
                self._slug(c): CapabilityAggregator(len(caps), hidden_size, aggregator_width)
                for c, caps in config.categories.items()
            }
        )
        self.reward_view = SequenceRewardView(self)
        self.score = BroadcastRewardScore()
        # post_init() initialises every registered module: run it before the pretrained backbone is attached, or it
        # would re-initialise the backbone and the LoRA B matrices (which must start at zero).
        self.post_init()
        self._attach_backbone(backbone)
        # Causal decoder: the router pools prompt tokens inside the pass it makes anyway (their states ignore the
        # response). Bidirectional encoder: the router's pass sees only the prompt (attention restricted).
        self._causal_backbone = backbone_is_causal(self.backbone)
        self._warned_whole_text_routing = False
        self._stage: tuple[str | None, str | None, str | None] = (None, None, None)
        self.model_card_metrics: dict = {}
        self.set_training_stage(None)

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike | PreTrainedModel,
        categories: dict[str, list[str]],
        tokenizer=None,
        lora_r: int = 32,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        aggregator_hidden_size: int | None = None,
        router_mode: str = "lora",
        pooling: str | None = None,
        expert_batching: str = "auto",
        task_mode: str = "lora",
        router_pooling: str | None = None,
        trunk_layers: int = 0,
        **backbone_kwargs,
    ) -> DMoERMForSequenceClassification:
        """Build a DMoERM on a pretrained backbone (its weights are loaded, never randomly initialised).

        Args:
            backbone: a hub id or local path (loaded with ``AutoModel.from_pretrained(backbone, **backbone_kwargs)``,
                e.g. ``dtype=torch.bfloat16``, ``attn_implementation="eager"``, ``revision=``), or an already loaded
                ``PreTrainedModel`` (a ``*ForCausalLM`` is unwrapped to its base model). Decoders (Llama, Qwen2, ...)
                and encoders (BERT, ...) work. Options it cannot honour (``quantization_config``, unknown names) are
                refused with a ``ValueError``.
            categories: ``{category: [capability, ...]}``; one task adapter per category, one expert per capability.
            tokenizer: optional; checked for a pad token, whose id is stored in the config, and its chat template's
                assistant-turn opener is recorded so that the router reads only the prompt (see
                :meth:`set_prompt_boundary`). Without it the router reads the whole text (with a warning).
            lora_r, lora_alpha, lora_dropout, lora_target_modules, aggregator_hidden_size, router_mode, pooling,
            expert_batching, task_mode, router_pooling, trunk_layers: see [`DMoERMConfig`] (``task_mode="full"``:
            one full base copy per category, fine-tuned in phase 1, as in the paper; memory grows with the number of
            categories. ``trunk_layers=L``: adapters only above the bottom ``L`` layers, which run once per sequence).

        Example:
            >>> model = DMoERMForSequenceClassification.from_backbone(  # doctest: +SKIP
            ...     "path/to/SmolLM2-135M-Instruct", {"objective_qa": ["correctness", "logic"]}, tokenizer=tokenizer)
        """
        from peft import PeftModel

        if isinstance(backbone, PeftModel):
            raise ValueError(
                "pass the base model, not a PeftModel: DMoERM adds its own LoRA adapters (merge yours first with "
                "merge_and_unload() if the base should include them)"
            )
        if isinstance(backbone, (str, os.PathLike)):
            check_load_kwargs(backbone_kwargs, "from_backbone", BACKBONE_KWARGS + HUB_KWARGS)
            base_path = str(backbone)
            base = load_pretrained_backbone(base_path, **backbone_kwargs)
            base_revision = None if os.path.isdir(base_path) else pinned_revision(
                base_path, backbone_kwargs.get("revision"), backbone_kwargs.get("cache_dir")
            )
        elif isinstance(backbone, PreTrainedModel):
            check_load_kwargs(backbone_kwargs, "from_backbone with an already loaded backbone (pass options when you "
                              "load it, e.g. AutoModel.from_pretrained(..., attn_implementation=...))", ())
            base_path, base_revision = backbone.name_or_path or None, None
            inner = getattr(backbone, backbone.base_model_prefix, None)
            base = inner if isinstance(inner, PreTrainedModel) else backbone
        else:
            raise TypeError(
                f"backbone must be a model id/path or a transformers PreTrainedModel, got {type(backbone).__name__}"
            )
        pad_token_id = base.config.pad_token_id if hasattr(base.config, "pad_token_id") else None
        if tokenizer is not None:
            if tokenizer.pad_token_id is None:
                raise ValueError(
                    f"the tokenizer ({type(tokenizer).__name__}) has no pad token; set one before building the reward "
                    "model, e.g. tokenizer.pad_token = tokenizer.eos_token (decoders) or add a '[PAD]' token"
                )
            pad_token_id = tokenizer.pad_token_id
        backbone_config = base.config.to_dict()
        config = DMoERMConfig(
            categories=categories,
            base_model_name_or_path=base_path,
            base_model_revision=base_revision,
            backbone_config=backbone_config,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_target_modules=lora_target_modules,
            aggregator_hidden_size=aggregator_hidden_size,
            router_mode=router_mode,
            pooling=pooling,
            expert_batching=expert_batching,
            task_mode=task_mode,
            router_pooling=router_pooling,
            trunk_layers=trunk_layers,
            hidden_size=base.config.hidden_size,
            max_position_embeddings=getattr(base.config, "max_position_embeddings", None),
            pad_token_id=pad_token_id,
        )
        model = cls(config, backbone=base)
        model.config._attn_implementation = base.config._attn_implementation  # report what the backbone runs
        # Heads follow the backbone's device and dtype.
        parameter = next(base.parameters())
        model.to(device=parameter.device, dtype=parameter.dtype)
        if tokenizer is not None:
            try:
                model.set_prompt_boundary(tokenizer)
            except PromptBoundaryError as error:
                logger.warning("%s. The router will read the whole text (prompt and response).", error)
        return model

    # ------------------------------------------------------------------------------------------ training stages
    # -------------------------------------------------------------------------------------------------- forward
    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.get_base_model().set_input_embeddings(value)

    @contextlib.contextmanager
    def _eval_mode_if_no_grad(self):
        # TRL's PPO/GRPO/RLOO call the reward model under no_grad but leave it in training mode: without this, LoRA
        # dropout would make rewards random and PEFT would refuse mixed-adapter batches.
        if self.training and not torch.is_grad_enabled():
            self.eval()
            try:
                yield
            finally:
                self.train()
        else:
            yield

    def _prepare_inputs(self, input_ids, attention_mask, position_ids):
        if input_ids is None:
            raise ValueError("DMoERM needs input_ids (routing and experts work on token ids, not inputs_embeds)")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(
                f"input_ids has shape {tuple(input_ids.shape)}: DMoERM needs at least one sequence of at least one "
                "token (tokenize a non-empty text)"
            )
        if attention_mask is None:
            if self.config.pad_token_id is not None:
                attention_mask = (input_ids != self.config.pad_token_id).long()
            else:
                attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.long()
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}"
            )
        empty_rows = (attention_mask.sum(-1) == 0).nonzero(as_tuple=True)[0].tolist()
        if empty_rows:
            raise ValueError(
                f"row(s) {empty_rows[:5]} of the batch have no tokens (attention_mask all 0): score non-empty texts"
            )
        limit = self.config.max_position_embeddings
        if limit is not None and input_ids.shape[1] > limit:
            # Over-long input keeps its end (the response), never its start; counted in the log (docs/rl.md).
            from .truncation import keep_end_of_batch, warn_truncated

            input_ids, attention_mask, truncated = keep_end_of_batch(input_ids, attention_mask, limit)
            warn_truncated("DMoERM forward", int(truncated.sum()), input_ids.shape[0], limit)
            position_ids = None
        if position_ids is None:
            # Positions count real tokens only, so left padding (PPO queries) gives the same rewards as no padding.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return input_ids, attention_mask, position_ids

    def _pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, mode: str | None = None):
        mask = attention_mask.bool()
        mode = mode or self.config.pooling
        if mode == "mean":  # mean over real tokens, whatever the padding side
            weights = mask.unsqueeze(-1).to(hidden_states.dtype)
            return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1)
        if mode == "first":
            index = mask.long().argmax(-1)  # first real token ([CLS]), also under left padding
        else:
            length = mask.shape[-1]
            index = length - 1 - mask.flip(-1).long().argmax(-1)  # last real token, also under left padding
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), index]

    def _backbone_kwargs(self, input_ids, attention_mask, position_ids, adapter_names, backbone) -> dict:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "return_dict": True}
        if self._backbone_takes_position_ids:
            kwargs["position_ids"] = position_ids
        if self._backbone_takes_use_cache:
            kwargs["use_cache"] = False
        if adapter_names is not None and hasattr(backbone, "peft_config"):  # a plain backbone takes no adapter names
            kwargs["adapter_names"] = adapter_names
        return kwargs

    def _trunk(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        """``(N, T, H)`` hidden states after the shared trunk (the bottom ``trunk_layers`` layers, no adapters and
        nothing trainable there, so no grad)."""
        kwargs = self._backbone_kwargs(input_ids, attention_mask, position_ids, None, self.backbone)
        with torch.no_grad(), layer_window(self.backbone, 0, self.config.trunk_layers) as captured:
            self.backbone(**kwargs)
        return captured["hidden"]

    def _branch(self, kwargs: dict, backbone, trunk: torch.Tensor) -> torch.Tensor:
        """The backbone's ``last_hidden_state`` computed from the trunk's output through the top layers only."""
        with layer_window(backbone, self.config.trunk_layers, None, hidden_in=trunk):
            return backbone(**kwargs).last_hidden_state

    def _encode(
        self, input_ids, attention_mask, position_ids, adapter_names: list[str] | None = None, backbone=None,
        pooling: str | None = None, trunk: torch.Tensor | None = None, pool_mask: torch.Tensor | None = None,
    ):
        """One backbone pass; returns the pooled hidden state (N, H). ``adapter_names`` picks an adapter per row
        (``"__base__"``: none); ``backbone`` defaults to the shared one, ``pooling`` to ``config.pooling``,
        ``pool_mask`` (the tokens pooled over) to ``attention_mask``. With ``trunk_layers > 0`` only the top layers
        run, from ``trunk`` (computed here when not given)."""
        backbone = self.backbone if backbone is None else backbone
        kwargs = self._backbone_kwargs(input_ids, attention_mask, position_ids, adapter_names, backbone)
        if self.config.trunk_layers:
            if trunk is None:
                trunk = self._trunk(input_ids, attention_mask, position_ids)
            hidden = self._branch(kwargs, backbone, trunk)
        else:
            hidden = backbone(**kwargs).last_hidden_state
        return self._pool(hidden, attention_mask if pool_mask is None else pool_mask, pooling)

    def _head_input(self, features: torch.Tensor, head: nn.Module) -> torch.Tensor:
        weight = next(head.parameters())
        return features.to(weight.dtype)

    def _use_mixed_batches(self, device: torch.device) -> bool:
        mode = self.config.expert_batching
        return mode == "mixed" or (mode == "auto" and device.type != "cpu")

    def _expert_features(self, input_ids, attention_mask, position_ids, category: str, trunk=None) -> torch.Tensor:
        """(N, k, H) pooled features of the category's k experts (inference path: eval mode, adapter per row);
        with a shared trunk, the trunk runs once for all k experts."""
        experts = self.expert_adapter_names(category)
        backbone = self.backbone_for(category)
        n = input_ids.shape[0]
        if self.config.trunk_layers and trunk is None:
            trunk = self._trunk(input_ids, attention_mask, position_ids)
        if self._use_mixed_batches(input_ids.device):
            k = len(experts)
            names = [name for name in experts for _ in range(n)]
            pooled = self._encode(
                input_ids.repeat(k, 1), attention_mask.repeat(k, 1), position_ids.repeat(k, 1), adapter_names=names,
                backbone=backbone, trunk=None if trunk is None else trunk.repeat(k, 1, 1),
            )
            return pooled.view(k, n, -1).transpose(0, 1)
        return torch.stack(
            [
                self._encode(
                    input_ids, attention_mask, position_ids, adapter_names=[name] * n, backbone=backbone, trunk=trunk
                )
                for name in experts
            ],
            1,
        )

    def _category_ids(self, categories, batch_size: int, device) -> torch.Tensor:
        if isinstance(categories, torch.Tensor):
            categories = categories.tolist()
        if isinstance(categories, (str, int)):
            categories = [categories] * batch_size
        if len(categories) != batch_size:
            raise ValueError(f"categories= has {len(categories)} entries for a batch of {batch_size}")
        return torch.tensor([self.config.category_id(c) for c in categories], dtype=torch.long, device=device)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        categories=None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        expert_features: torch.Tensor | None = None,
        return_dict: bool | None = None,
        prompt_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> DMoERMOutput:
        """Reward of each sequence.

        Args:
            input_ids, attention_mask: ``(B, T)``; left, right or mixed padding.
            categories: optional category names or ids (one per row, or one for all): bypass the router.
            position_ids: optional; by default counted over real tokens.
            prompt_mask: optional ``(B, T)``, 1 on the prompt tokens the router reads. By default the prompt ends at
                the last assistant-turn opener of each row (``config.assistant_opener_ids``); a row without one is
                an error.
            labels: category ids, only in the router stage (gives ``loss``).
            expert_features: ``(B, k*H)`` cached expert features, only in the aggregator stage.
            **kwargs: accepted and ignored (TRL passes ``use_cache=``, ``margin=``).
        """
        stage, category, capability = self._stage
        if stage == "aggregator" and expert_features is not None:
            # Phase 3 on cached features: the backbone does not run, token ids are not needed.
            aggregator = self.aggregators[self._slug(category)]
            category_ids = torch.full(
                (expert_features.shape[0],), self.config.category_id(category), device=expert_features.device
            )
            return DMoERMOutput(logits=aggregator(self._head_input(expert_features, aggregator)), category_ids=category_ids)
        input_ids, attention_mask, position_ids = self._prepare_inputs(input_ids, attention_mask, position_ids)
        with self._eval_mode_if_no_grad():
            if stage is None:
                if self.training and torch.is_grad_enabled():
                    raise RuntimeError(
                        "this DMoERM is in training mode with gradients enabled but no training stage is set; call "
                        "model.set_training_stage('router' | 'task' | 'capability' | 'aggregator', ...) to train one "
                        "part, or model.eval() / torch.no_grad() to score"
                    )
                return self._inference_forward(input_ids, attention_mask, position_ids, categories, prompt_mask)
            return self._stage_forward(
                stage, category, input_ids, attention_mask, position_ids, labels, expert_features, prompt_mask
            )

    def _inference_forward(
        self, input_ids, attention_mask, position_ids, categories, prompt_mask=None
    ) -> DMoERMOutput:
        batch_size = input_ids.shape[0]
        router_logits = router_probs = None
        # The shared trunk (trunk_layers > 0) runs once per sequence, for the router and every expert.
        trunk = self._trunk(input_ids, attention_mask, position_ids) if self.config.trunk_layers else None
        if categories is None:
            router_logits = self._route(input_ids, attention_mask, position_ids, trunk, prompt_mask)
            router_probs = router_logits.float().softmax(-1)
            category_ids = router_probs.argmax(-1)
        else:
            category_ids = self._category_ids(categories, batch_size, input_ids.device)
        dtype = self.router_head.weight.dtype
        rewards = torch.zeros(batch_size, 1, device=input_ids.device, dtype=dtype)
        capability_rewards = torch.full(
            (batch_size, self.config.max_capabilities), float("nan"), device=input_ids.device, dtype=dtype
        )
        # Sparse outer MoE at the batch level: one group per routed category, no loop over samples.
        for category_id in category_ids.unique().tolist():
            category = self.config.category_names[category_id]
            rows = (category_ids == category_id).nonzero(as_tuple=True)[0]
            features = self._expert_features(
                input_ids[rows], attention_mask[rows], position_ids[rows], category,
                None if trunk is None else trunk[rows],
            )
            experts = self.expert_adapter_names(category)
            heads = [self.value_heads[name] for name in experts]
            features = self._head_input(features, heads[0])
            capability_rewards[rows, : len(experts)] = torch.cat(
                [head(features[:, j]) for j, head in enumerate(heads)], -1
            ).to(dtype)
            aggregator = self.aggregators[self._slug(category)]
            rewards[rows] = aggregator(features.flatten(1), calibrated=self.config.calibrate_rewards).to(dtype)
        return DMoERMOutput(
            logits=rewards,
            category_ids=category_ids,
            router_logits=router_logits,
            router_probs=router_probs,
            capability_rewards=capability_rewards,
        )

    @contextlib.contextmanager
    def _backbone_eval(self):
        backbones = self.all_backbones()
        was_training = [backbone.training for backbone in backbones]
        for backbone in backbones:
            backbone.eval()
        try:
            yield
        finally:
            for backbone, mode in zip(backbones, was_training):
                backbone.train(mode)

    @torch.no_grad()
    def compute_expert_features(self, input_ids, attention_mask=None, category=None, position_ids=None):
        """``(B, k*H)`` concatenated pooled features of the category's frozen experts: the phase-3 feature cache.

        Example:
            >>> feats = model.compute_expert_features(batch["input_ids"], batch["attention_mask"], "chitchat")  # doctest: +SKIP
        """
        if category is None:
            raise ValueError(f"compute_expert_features needs category=, one of {self.config.category_names}")
        self.config.category_id(category)
        input_ids, attention_mask, position_ids = self._prepare_inputs(input_ids, attention_mask, position_ids)
        with self._backbone_eval():
            return self._expert_features(input_ids, attention_mask, position_ids, category).flatten(1)

    @torch.no_grad()
    def sequence_rewards(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """``(B,)`` full DMoERM rewards (router + experts + aggregator); what TRL PPO's ``get_reward`` reads."""
        if self._stage[0] is not None:
            raise RuntimeError(
                f"this DMoERM is in training stage {self._stage[0]!r}; call model.set_training_stage(None) before "
                "using it as a reward model"
            )
        input_ids, attention_mask, position_ids = self._prepare_inputs(input_ids, attention_mask, position_ids)
        was_training = self.training
        self.eval()
        try:
            return self._inference_forward(input_ids, attention_mask, position_ids, None).logits[:, 0]
        finally:
            self.train(was_training)

    def compute_rewards(
        self, conversations, tokenizer, batch_size: int = 16, max_length: int | None = None, categories=None
    ):
        """Score chat conversations (or chat-templated texts): a list of ``{reward, category, router_prob,
        capabilities}`` dicts. The category comes from the prompt alone; ``categories=`` bypasses the router.

        Example:
            >>> model.compute_rewards([[{"role": "user", "content": "Hi"},  # doctest: +SKIP
            ...                         {"role": "assistant", "content": "Hello!"}]], tokenizer)
            [{'reward': 0.12, 'category': 'chitchat', 'router_prob': 0.61, 'capabilities': {'empathy': ...}}]
        """
        from .scoring import score_conversations

        return score_conversations(
            self, conversations, tokenizer, batch_size=batch_size, max_length=max_length, categories=categories
        )

    # -------------------------------------------------------------------------------------------------- files
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

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        state_dict: dict | None = None,
        save_base: bool = False,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        final_directory: str | os.PathLike | None = None,
        **kwargs,
    ) -> None:
        """Save config, one standard PEFT folder per adapter (``adapters/<name>/``), the heads and a model card.

        ``config.json`` names the base so that the folder can move (hub id, ``./path`` inside the folder, else an
        absolute path: docs/hub.md); ``save_base=True`` also writes the base to ``base/``. ``final_directory``: where
        a folder written to a staging folder first will end up. ``state_dict`` (e.g. gathered by ZeRO-3) replaces
        this model's own; ``safe_serialization``/``max_shard_size`` are accepted (files are always safetensors).

        Example:
            >>> model.save_pretrained("runs/my-dmoerm")  # doctest: +SKIP
        """
        from .serialization import save_dmoerm

        if push_to_hub:
            raise ValueError("use model.push_to_hub(repo_id) to upload")
        if not is_main_process:
            return
        save_dmoerm(self, save_directory, state_dict=state_dict, save_base=save_base, final_directory=final_directory)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        config: DMoERMConfig | None = None,
        base_model_name_or_path: str | None = None,
        **kwargs,
    ) -> DMoERMForSequenceClassification:
        """Load a saved DMoERM (local folder or hub repo): the base from ``base/`` or its recorded hub id / path
        (relative to the folder or absolute; a missing base is a clear ``FileNotFoundError`` naming it and the fix),
        then the adapters and heads. ``dtype=``, ``device_map=``, ``attn_implementation=``, ``low_cpu_mem_usage=``
        reach the backbone; hub options (``revision``, ``token``, ``cache_dir``, ``local_files_only``) apply to this
        repo (the base loads at its own recorded revision); ``base_model_name_or_path=`` overrides where the base
        comes from. Options it cannot honour (``quantization_config``, unknown names) are refused (``ValueError``).

        Example:
            >>> import dmoerm_trl
            >>> from transformers import AutoModelForSequenceClassification
            >>> model = AutoModelForSequenceClassification.from_pretrained("./my-dmoerm")  # doctest: +SKIP
        """
        from .paths import require_model
        from .serialization import load_dmoerm

        require_model(str(pretrained_model_name_or_path), "pretrained_model_name_or_path")
        return load_dmoerm(cls, pretrained_model_name_or_path, config, base_model_name_or_path, kwargs)

    def load_dmoerm_weights(self, folder: str | os.PathLike) -> None:
        """Load adapters and heads saved by ``save_pretrained`` into this model (same config); used for resuming."""
        from .serialization import load_dmoerm_weights

        load_dmoerm_weights(self, folder)

    def push_to_hub(self, repo_id: str, *, save_base: bool = False, metrics: dict | None = None, **kwargs) -> str:
        """Upload config, adapters, heads and a model card to the Hub (see [`dmoerm_trl.hub.push_to_hub`])."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, save_base=save_base, metrics=metrics, **kwargs)


AutoConfig.register(DMoERMConfig.model_type, DMoERMConfig, exist_ok=True)
AutoModelForSequenceClassification.register(DMoERMConfig, DMoERMForSequenceClassification, exist_ok=True)
