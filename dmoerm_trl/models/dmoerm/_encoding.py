"""The backbone passes of a DMoERM: input checks, one (adapter-selecting) backbone pass, pooling, the shared trunk,
and the k experts' features of one category. Mixed into [`DMoERMForSequenceClassification`]; what the passes are
used for (routing, the inference forward, the stage forward) lives in ``modeling_dmoerm.py``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ._trunk import layer_window


class BackbonePassMixin:
    """Inputs -> pooled hidden states ``(N, H)``, for the router, the experts and the training stages."""

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
            from ...truncation import keep_end_of_batch, warn_truncated

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
        self,
        input_ids,
        attention_mask,
        position_ids,
        adapter_names: list[str] | None = None,
        backbone=None,
        pooling: str | None = None,
        trunk: torch.Tensor | None = None,
        pool_mask: torch.Tensor | None = None,
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
                input_ids.repeat(k, 1),
                attention_mask.repeat(k, 1),
                position_ids.repeat(k, 1),
                adapter_names=names,
                backbone=backbone,
                trunk=None if trunk is None else trunk.repeat(k, 1, 1),
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
