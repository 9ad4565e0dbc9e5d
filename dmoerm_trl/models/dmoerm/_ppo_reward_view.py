"""The TRL PPO reward-model contract, for reward models that are not "one linear head on one backbone".

TRL's PPO (``trl.experimental.ppo``, trl 1.10-1.12) does not call ``reward_model(...)``. It calls::

    out = getattr(rm, rm.base_model_prefix)(input_ids=..., attention_mask=..., position_ids=...,
                                            return_dict=True, output_hidden_states=True, use_cache=False)
    values = rm.score(out.hidden_states[-1])        # must be (B, T, 1)

and reads ``values`` at the last non-pad token. A DMoERM (router + k experts + aggregator) or an ensemble cannot be
written as ``score(hidden_state)``, so such a model exposes, under its ``base_model_prefix``, a parameter-free
:class:`SequenceRewardView` whose forward computes the model's full reward and returns it broadcast over the time
axis as the "last hidden state", and a parameter-free :class:`BroadcastRewardScore` as ``score``. The view holds its
owner through a weak reference, so it is not a second copy of the owner's parameters in ``state_dict()`` and
``save_pretrained``/``from_pretrained`` are unaffected.

Example:
    >>> class MyRM(PreTrainedModel):                                  # doctest: +SKIP
    ...     base_model_prefix = "reward_view"
    ...     def __init__(self, config):
    ...         super().__init__(config)
    ...         self.reward_view = SequenceRewardView(self)
    ...         self.score = BroadcastRewardScore()
    ...     def sequence_rewards(self, input_ids, attention_mask, position_ids=None):  # -> (B,)
    ...         ...
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast


class SequenceRewardView(nn.Module):
    """Callable as ``rm.<base_model_prefix>(...)``: returns the owner's reward as a (B, T, 1) "hidden state".

    The owner must define ``sequence_rewards(input_ids, attention_mask, position_ids=None) -> Tensor (B,)``.
    """

    def __init__(self, owner: nn.Module):
        super().__init__()
        # A weak reference, not a submodule: the owner already registers its parameters.
        object.__setattr__(self, "_owner_ref", weakref.ref(owner))

    @property
    def owner(self) -> nn.Module:
        owner = self._owner_ref()
        if owner is None:
            raise RuntimeError("the reward model this view belongs to no longer exists")
        return owner

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if input_ids is None:
            raise ValueError("the reward view needs input_ids (inputs_embeds cannot be routed to experts)")
        rewards = self.owner.sequence_rewards(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        per_position = rewards.reshape(-1, 1, 1).expand(-1, input_ids.shape[1], 1)
        return BaseModelOutputWithPast(last_hidden_state=per_position, hidden_states=(per_position,))

    def get_input_embeddings(self):
        return self.owner.get_input_embeddings()


class BroadcastRewardScore(nn.Module):
    """``rm.score``: the view's "hidden state" already is the reward, (B, T, 1); pass it through."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != 1:
            raise ValueError(
                f"score() expects the (B, T, 1) output of the reward view, got shape {tuple(hidden_states.shape)}; "
                "call it as TRL does: rm.score(getattr(rm, rm.base_model_prefix)(...).hidden_states[-1])"
            )
        return hidden_states
