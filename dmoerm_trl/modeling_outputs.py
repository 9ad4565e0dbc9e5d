"""Output dataclass of a DMoERM forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import ModelOutput


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
