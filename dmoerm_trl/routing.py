"""Routing of a DMoERM: the router reads the prompt only (every turn before the final assistant response).

Mixed into [`DMoERMForSequenceClassification`]. The prompt ends at the last occurrence, among each row's real tokens,
of the chat template's assistant-turn opener recorded in the config (``prompt_boundary.py``). A causal decoder pools
the router over the prompt tokens inside the pass it makes anyway (their hidden states ignore the response); a
bidirectional encoder runs the router's pass with the prompt as its attention mask.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .prompt_boundary import PromptBoundaryError, assistant_opener_ids, prompt_mask_from_opener
from .training_stages import ROUTER_ADAPTER

logger = logging.getLogger("dmoerm_trl.modeling_dmoerm")  # one logger name for the model's warnings


class RoutingMixin:
    """``set_prompt_boundary``, ``route`` and the router's features, from prompt tokens only."""

    def set_prompt_boundary(self, tokenizer) -> list[int]:
        """Record in the config the token ids that open an assistant turn in ``tokenizer``'s chat template, so that
        the router reads only the prompt (the tokens up to and including the last opener of each row). Returns them.

        Raises :class:`~dmoerm_trl.prompt_boundary.PromptBoundaryError` when the template has no such opener.

        Example:
            >>> model.set_prompt_boundary(tokenizer)  # doctest: +SKIP
            [1, 520, 9531, 198]
        """
        opener = assistant_opener_ids(tokenizer)
        self.config.assistant_opener_ids = opener
        self.config.assistant_opener_text = tokenizer.decode(opener)
        return opener

    def _router_prompt_mask(self, input_ids, attention_mask, prompt_mask=None) -> torch.Tensor:
        """``(N, T)`` mask of the tokens the router reads: the prompt (real tokens up to and including the last
        assistant-turn opener, ``config.assistant_opener_ids``), or ``prompt_mask`` when given."""
        if prompt_mask is not None:
            if prompt_mask.shape != input_ids.shape:
                raise ValueError(
                    f"prompt_mask has shape {tuple(prompt_mask.shape)} but input_ids {tuple(input_ids.shape)}; give "
                    "one 0/1 entry per token (1 on the prompt)"
                )
            prompt_mask = prompt_mask.to(attention_mask.device).long() * attention_mask
            empty = (prompt_mask.sum(-1) == 0).nonzero()
            if len(empty):
                row = int(empty[0])
                raise PromptBoundaryError(row, f"prompt_mask row {row} marks no real token as prompt")
            return prompt_mask
        opener = self.config.assistant_opener_ids
        if not opener:
            if not self._warned_whole_text_routing:
                self._warned_whole_text_routing = True
                logger.warning(
                    "this DMoERM has no recorded prompt boundary (config.assistant_opener_ids), so its router reads "
                    "the whole text, response included. Fix: model.set_prompt_boundary(tokenizer) with a tokenizer "
                    "that has a chat template (from_backbone(..., tokenizer=) does it), or pass prompt_mask= or "
                    "categories="
                )
            return attention_mask
        mask, found = prompt_mask_from_opener(input_ids, attention_mask, opener)
        if not bool(found.all()):
            row = int((~found).nonzero()[0])
            raise PromptBoundaryError(
                row,
                f"row {row} of the batch does not contain the assistant-turn opener "
                f"{self.config.assistant_opener_text!r} (token ids {opener}), so its prompt cannot be told from its "
                "response and the router (which reads the prompt only) cannot route it. Fix: build the text with the "
                "tokenizer's chat template (the conversation ending with the assistant response), or pass "
                "prompt_mask= (1 on prompt tokens) or categories= (bypass the router); in GRPO/RLOO use "
                "conversational prompts, or reward_funcs=[RewardScorer(model, tokenizer).as_reward_function()] for text prompts"
            )
        return mask

    def _router_features(self, input_ids, attention_mask, position_ids, trunk=None, prompt_mask=None) -> torch.Tensor:
        """``(N, H)``: what the router head reads, from the prompt tokens only. ``router_mode="lora"``: the pooled
        output of the router adapter; ``"linear"``: of the plain base; ``"trunk"``: the pooled shared-trunk output.

        Causal decoder: the pass runs over the whole input as before and pools over the prompt tokens only (their
        hidden states do not depend on the response), so no pass is added. Bidirectional encoder: prompt tokens
        would see the response, so the router's pass gets the prompt as its attention mask (for ``"lora"`` and
        ``"linear"`` that is the router's own pass; for ``"trunk"`` one extra trunk pass)."""
        prompt_mask = self._router_prompt_mask(input_ids, attention_mask, prompt_mask)
        attention = attention_mask if self._causal_backbone else prompt_mask
        if not self._causal_backbone:
            trunk = None  # the shared trunk saw the response
        if self.config.router_mode == "trunk":
            if trunk is None:
                trunk = self._trunk(input_ids, attention, position_ids)
            pooled = self._pool(trunk, prompt_mask, self.config.router_pooling)
            # A middle layer's hidden state has not been through the backbone's final norm (and can carry a few
            # huge outlier dimensions): a parameter-free layer norm puts the head's input on one scale.
            return F.layer_norm(pooled, pooled.shape[-1:])
        adapter = ROUTER_ADAPTER if self.config.router_mode == "lora" else "__base__"
        return self._encode(
            input_ids, attention, position_ids, adapter_names=[adapter] * input_ids.shape[0],
            pooling=self.config.router_pooling, trunk=trunk, pool_mask=prompt_mask,
        )

    def _route(self, input_ids, attention_mask, position_ids, trunk=None, prompt_mask=None) -> torch.Tensor:
        pooled = self._router_features(input_ids, attention_mask, position_ids, trunk, prompt_mask)
        return self.router_head(self._head_input(pooled, self.router_head))

    @torch.no_grad()
    def route(self, input_ids, attention_mask=None, position_ids=None, prompt_mask=None) -> torch.Tensor:
        """``(B, C)`` router logits from the prompt tokens (inference: no grad, no dropout, whatever the training
        stage). ``prompt_mask`` as in ``forward``.

        Example:
            >>> categories = model.route(batch["input_ids"], batch["attention_mask"]).argmax(-1)  # doctest: +SKIP
        """
        input_ids, attention_mask, position_ids = self._prepare_inputs(input_ids, attention_mask, position_ids)
        with self._backbone_eval():
            return self._route(input_ids, attention_mask, position_ids, prompt_mask=prompt_mask)
