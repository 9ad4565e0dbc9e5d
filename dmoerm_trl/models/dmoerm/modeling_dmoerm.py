"""DMoERM as a Hugging Face sequence-classification reward model: the model, its router and its aggregator.

Reading guide (top to bottom):

1. ``DMoERMForSequenceClassification.from_backbone`` loads a pretrained backbone and puts LoRA adapters on it:
   ``router`` (router_mode="lora"), per category ``<category>__task`` (phase 1) and ``<category>__<capability>``
   (one capability expert each, phase 2). Heads are plain registered modules: ``router_head`` (the
   [`DMoERMRouter`], H -> C), ``task_heads[category]`` and ``value_heads[expert]`` (H -> 1),
   ``aggregators[category]`` (the [`CapabilityAggregator`], k*H -> A -> 1).
2. ``forward`` (inference): route on the prompt only (the tokens up to the chat template's last assistant-turn
   opener, ``_prompt_boundary.py``) -> group the batch by category -> run each group's k experts (one mixed-adapter
   pass, or k passes: same numbers) -> value heads give ``capability_rewards``, the aggregator gives ``logits``.
3. ``set_training_stage`` selects what one forward computes and which parameters train (router, a task adapter,
   one expert, an aggregator), so that each phase is an ordinary Trainer run over one adapter per forward.
4. ``save_pretrained``/``from_pretrained``: config + one standard PEFT folder per adapter + a safetensors file of
   the heads; the base is referenced by id/path (or saved under ``base/`` with ``save_base=True``).

``task_mode="full"`` (the paper's layout, an option): every category gets its own full copy of the base
(``category_backbones[category]``), fully fine-tuned in phase 1 in place of a task adapter; the category's experts are
LoRA adapters on that copy, the router stays on the original base (``backbone``).

Private helpers beside this file: ``_backbone.py`` (loading the base, its LoRA targets, pooling and pad token),
``_lora_injection.py`` (adapter names, the PEFT-wrapped backbone(s)), ``_encoding.py`` (the backbone passes and
pooling), ``_trunk.py`` (the shared bottom layers), ``training_stages.py`` (what one forward trains),
``_serialization.py`` (the saved folder), ``_ppo_reward_view.py`` (TRL PPO's contract).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from ._backbone import backbone_is_causal, detect_pooling, resolve_backbone, resolve_pad_token_id
from ._encoding import BackbonePassMixin
from ._lora_injection import AdapterLayoutMixin
from ._ppo_reward_view import BroadcastRewardScore, SequenceRewardView
from ._prompt_boundary import PromptBoundaryError, assistant_opener_ids, router_prompt_mask
from ._serialization import SavedFolderMixin
from .configuration_dmoerm import DMoERMConfig
from .training_stages import ROUTER_ADAPTER, STAGES, TrainingStagesMixin  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)


@dataclass
class DMoERMOutput(ModelOutput):
    """Output of [`DMoERMForSequenceClassification`].

    Args:
        loss: the router's cross-entropy when training the router with ``labels=``; otherwise ``None``.
        logits: ``(B, 1)`` reward (inference and the task/capability/aggregator stages) or ``(B, C)`` router logits
            (router stage).
        category_ids: ``(B,)`` category index of each row (routed, given with ``categories=``, or the stage's).
        router_logits / router_probs: ``(B, C)``; ``None`` when the router did not run (``categories=`` given).
        capability_rewards: ``(B, K_max)``: column ``j`` is expert ``j`` of the row's category
            (``config.categories[category][j]``); ``NaN`` where the category has fewer than ``K_max`` capabilities.
            Only in inference.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    category_ids: torch.LongTensor | None = None
    router_logits: torch.FloatTensor | None = None
    router_probs: torch.FloatTensor | None = None
    capability_rewards: torch.FloatTensor | None = None


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
        mean, std = self.feature_mean.to(expert_features.dtype), self.feature_std.to(expert_features.dtype)
        reward = self.out(self.act(self.proj((expert_features - mean) / std)))
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


class DMoERMRouter(nn.Linear):
    """The outer MoE's gate: one logit per category, read from the prompt tokens only.

    The module is the router's linear head (``H -> C``; saved as ``router_head.weight``/``.bias``, as before it had
    a class of its own) and holds the route logic: which tokens it reads ([`prompt_mask`]: the prompt, up to the
    chat template's last assistant-turn opener), the pass that gives its features ([`features`]: the ``router``
    LoRA adapter, the plain base or the shared trunk, by ``config.router_mode``) and its pooling
    (``config.router_pooling``). It holds no backbone: the model that owns it is passed in (a second reference to
    the backbone would duplicate its weights in ``state_dict()``). Every caller routes through [`route`], also the
    router training stage, evaluation and the pipeline's routing of uncategorised pairs (via ``model.route``).

    Example:
        >>> import torch
        >>> router = DMoERMRouter(hidden_size=4, num_categories=3)
        >>> router(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, hidden_size: int, num_categories: int):
        super().__init__(hidden_size, num_categories)
        self.warned_whole_text = False

    def prompt_mask(self, model, input_ids, attention_mask, prompt_mask=None) -> torch.Tensor:
        """``(N, T)`` mask of the tokens the router reads: ``prompt_mask`` when given, else the prompt found from
        ``config.assistant_opener_ids`` (the whole text, warned once, when the model has no recorded boundary)."""
        if prompt_mask is None and not model.config.assistant_opener_ids and not self.warned_whole_text:
            self.warned_whole_text = True
            logger.warning(
                "this DMoERM has no recorded prompt boundary (config.assistant_opener_ids), so its router reads "
                "the whole text, response included. Fix: model.set_prompt_boundary(tokenizer) with a tokenizer "
                "that has a chat template (from_backbone(..., tokenizer=) does it), or pass prompt_mask= or "
                "categories="
            )
        return router_prompt_mask(model.config, input_ids, attention_mask, prompt_mask)

    def features(self, model, input_ids, attention_mask, position_ids, trunk=None, prompt_mask=None) -> torch.Tensor:
        """``(N, H)``: what the head reads, from the prompt tokens only. ``router_mode="lora"``: the pooled output of
        the router adapter; ``"linear"``: of the plain base; ``"trunk"``: the pooled shared-trunk output.

        Causal decoder: the pass runs over the whole input and pools over the prompt tokens only (their hidden
        states do not depend on the response), so no pass is added. Bidirectional encoder: prompt tokens would see
        the response, so the router's pass gets the prompt as its attention mask (for ``"lora"`` and ``"linear"``
        that is the router's own pass; for ``"trunk"`` one extra trunk pass)."""
        prompt_mask = self.prompt_mask(model, input_ids, attention_mask, prompt_mask)
        attention = attention_mask if model._causal_backbone else prompt_mask
        if not model._causal_backbone:
            trunk = None  # the shared trunk saw the response
        if model.config.router_mode == "trunk":
            if trunk is None:
                trunk = model._trunk(input_ids, attention, position_ids)
            pooled = model._pool(trunk, prompt_mask, model.config.router_pooling)
            # A middle layer's hidden state has not been through the backbone's final norm (and can carry a few
            # huge outlier dimensions): a parameter-free layer norm puts the head's input on one scale.
            return F.layer_norm(pooled, pooled.shape[-1:])
        adapter = ROUTER_ADAPTER if model.config.router_mode == "lora" else "__base__"
        if model.training_stage[0] == "router" and model.config.router_mode == "lora" and model.backbone.training:
            # Training the router adapter: it is the active one (set_training_stage), one adapter per forward, so
            # gradient checkpointing sees a single adapter.
            if model.backbone.active_adapter != ROUTER_ADAPTER:
                model.backbone.set_adapter(ROUTER_ADAPTER)
            adapter_names = None
        else:
            adapter_names = [adapter] * input_ids.shape[0]
        return model._encode(
            input_ids,
            attention,
            position_ids,
            adapter_names=adapter_names,
            pooling=model.config.router_pooling,
            trunk=trunk,
            pool_mask=prompt_mask,
        )

    def route(self, model, input_ids, attention_mask, position_ids, trunk=None, prompt_mask=None) -> torch.Tensor:
        """``(N, C)`` router logits (with the graph when the router trains, see ``model.route`` for inference)."""
        pooled = self.features(model, input_ids, attention_mask, position_ids, trunk, prompt_mask)
        return self(pooled.to(self.weight.dtype))


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


class DMoERMForSequenceClassification(
    AdapterLayoutMixin, BackbonePassMixin, TrainingStagesMixin, SavedFolderMixin, DMoERMPreTrainedModel
):
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

        self.router_head = DMoERMRouter(hidden_size, config.num_categories)
        self.task_heads = nn.ModuleDict({self._slug(c): nn.Linear(hidden_size, 1) for c in config.categories})
        self.value_heads = nn.ModuleDict(
            {
                self.adapter_name(c, cap): nn.Linear(hidden_size, 1)
                for c, caps in config.categories.items()
                for cap in caps
            }
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
        base, base_path, base_revision = resolve_backbone(backbone, backbone_kwargs)
        config = DMoERMConfig(
            categories=categories,
            base_model_name_or_path=base_path,
            base_model_revision=base_revision,
            backbone_config=base.config.to_dict(),
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
            pad_token_id=resolve_pad_token_id(base, tokenizer),
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

    # ---------------------------------------------------------------------------------------------------- routing
    def set_prompt_boundary(self, tokenizer) -> list[int]:
        """Record in the config the token ids that open an assistant turn in ``tokenizer``'s chat template, so that
        the router reads only the prompt (the tokens up to and including the last opener of each row). Returns them.

        Raises :class:`PromptBoundaryError` when the template has no such opener.

        Example:
            >>> model.set_prompt_boundary(tokenizer)  # doctest: +SKIP
            [1, 520, 9531, 198]
        """
        opener = assistant_opener_ids(tokenizer)
        self.config.assistant_opener_ids = opener
        self.config.assistant_opener_text = tokenizer.decode(opener)
        return opener

    @torch.no_grad()
    def route(self, input_ids, attention_mask=None, position_ids=None, prompt_mask=None) -> torch.Tensor:
        """``(B, C)`` router logits from the prompt tokens (inference: no grad, no dropout, whatever the training
        stage). ``prompt_mask`` as in ``forward``. The one routing entry point (evaluation, the pipeline, serving).

        Example:
            >>> categories = model.route(batch["input_ids"], batch["attention_mask"]).argmax(-1)  # doctest: +SKIP
        """
        input_ids, attention_mask, position_ids = self._prepare_inputs(input_ids, attention_mask, position_ids)
        with self._backbone_eval():
            return self.router_head.route(self, input_ids, attention_mask, position_ids, prompt_mask=prompt_mask)

    # -------------------------------------------------------------------------------------------------- forward
    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.get_base_model().set_input_embeddings(value)

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
        stage, category, _capability = self._stage
        if stage == "aggregator" and expert_features is not None:
            # Phase 3 on cached features: the backbone does not run, token ids are not needed.
            aggregator = self.aggregators[self._slug(category)]
            category_ids = torch.full(
                (expert_features.shape[0],), self.config.category_id(category), device=expert_features.device
            )
            return DMoERMOutput(
                logits=aggregator(self._head_input(expert_features, aggregator)), category_ids=category_ids
            )
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
            router_logits = self.router_head.route(self, input_ids, attention_mask, position_ids, trunk, prompt_mask)
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
                input_ids[rows],
                attention_mask[rows],
                position_ids[rows],
                category,
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

    def _stage_forward(
        self, stage, category, input_ids, attention_mask, position_ids, labels, expert_features, prompt_mask=None
    ) -> DMoERMOutput:
        """One training stage's forward (see ``training_stages.py``): router logits, or one head's ``(B, 1)``."""
        batch_size = input_ids.shape[0]
        if stage == "aggregator":
            expert_features = self.compute_expert_features(input_ids, attention_mask, category, position_ids)
            aggregator = self.aggregators[self._slug(category)]
            logits = aggregator(self._head_input(expert_features, aggregator))
            category_ids = torch.full((batch_size,), self.config.category_id(category), device=input_ids.device)
            return DMoERMOutput(logits=logits, category_ids=category_ids)
        if stage == "router":
            # The router is trained as it is used: on the prompt tokens only, through DMoERMRouter.route.
            if self.config.router_mode == "lora":
                logits = self.router_head.route(self, input_ids, attention_mask, position_ids, prompt_mask=prompt_mask)
            else:
                # "linear" / "trunk": the base stays frozen and only the head learns, so the features need no graph.
                with torch.no_grad(), self._backbone_eval():
                    pooled = self.router_head.features(
                        self, input_ids, attention_mask, position_ids, prompt_mask=prompt_mask
                    )
                logits = self.router_head(self._head_input(pooled, self.router_head))
            loss = F.cross_entropy(logits.float(), labels.to(logits.device)) if labels is not None else None
            return DMoERMOutput(loss=loss, logits=logits, router_logits=logits, router_probs=logits.softmax(-1))

        backbone = self.backbone_for(category)
        if self._stage_adapter is None:
            # task_mode="full", phase 1: the category's own base copy, fully trained, its expert adapters switched
            # off by set_training_stage.
            pooled = self._encode(input_ids, attention_mask, position_ids, backbone=backbone)
        elif backbone.training:
            # Training: the stage's adapter is the active one (set_training_stage), one adapter per forward, so
            # gradient checkpointing sees a single adapter.
            if backbone.active_adapter != self._stage_adapter:
                backbone.set_adapter(self._stage_adapter)
            pooled = self._encode(input_ids, attention_mask, position_ids, backbone=backbone)
        else:
            pooled = self._encode(
                input_ids, attention_mask, position_ids, [self._stage_adapter] * batch_size, backbone=backbone
            )
        head = self.task_heads[self._slug(category)] if stage == "task" else self.value_heads[self._stage_adapter]
        category_ids = torch.full((batch_size,), self.config.category_id(category), device=input_ids.device)
        return DMoERMOutput(logits=head(self._head_input(pooled, head)), category_ids=category_ids)

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
        capability_rewards}`` dicts. The category comes from the prompt alone; ``categories=`` bypasses the router.

        Example:
            >>> model.compute_rewards([[{"role": "user", "content": "Hi"},  # doctest: +SKIP
            ...                         {"role": "assistant", "content": "Hello!"}]], tokenizer)
            [{'reward': 0.12, 'category': 'chitchat', 'router_prob': 0.61, 'capability_rewards': {'empathy': ...}}]
        """
        from ...scoring import score_conversations

        return score_conversations(
            self, conversations, tokenizer, batch_size=batch_size, max_length=max_length, categories=categories
        )


AutoConfig.register(DMoERMConfig.model_type, DMoERMConfig, exist_ok=True)
AutoModelForSequenceClassification.register(DMoERMConfig, DMoERMForSequenceClassification, exist_ok=True)
