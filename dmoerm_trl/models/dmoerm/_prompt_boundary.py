"""Where the prompt ends: the token sequence that opens the final assistant turn, found from the chat template.

DMoERM routes a conversation on its prompt only (all turns before the final assistant response), as the paper and
its reference code do: routing on the response sends off-task policy samples to another category. Paths that see
only token ids (TRL's RewardTrainer, GRPO/RLOO, PPO's ``get_reward``, ``dmoerm score``) need the prompt boundary,
so the model records, when it is built with a tokenizer, the token ids that open an assistant turn in that
tokenizer's chat template (``config.assistant_opener_ids``: ``<|im_start|>assistant\\n`` for ChatML,
``<|start_header_id|>assistant<|end_header_id|>\\n\\n`` for Llama-3). At scoring time the **last** occurrence of
that opener in each row ends the prompt; the prompt mask covers every real token up to and including it. This is
pure tensor work on the ids already there: no second tokenizer pass.

The opener is derived, never hard-coded per model family: the template is rendered for one user turn without and
with ``add_generation_prompt`` (or, for a template without a generation prompt, with a sentinel assistant message),
the token ids are compared, and the part that both the generation prompt and a real assistant turn start with is
kept.

Example:
    >>> from dmoerm_trl.testing_utils import make_tiny_tokenizer
    >>> tokenizer = make_tiny_tokenizer()
    >>> opener = assistant_opener_ids(tokenizer)
    >>> tokenizer.decode(opener)
    '<|im_start|>assistant\\n'
"""

from __future__ import annotations

import torch

_USER_SENTINEL = "Dmoerm user turn sentinel 7"
_ASSISTANT_SENTINEL = "Dmoerm assistant turn sentinel 9"


class PromptBoundaryError(ValueError):
    """No prompt boundary can be found; the message names the row (``.row``, when one row is at fault) or the
    tokenizer, and the fix."""

    def __init__(self, *args):
        self.row = args[0] if len(args) > 1 and isinstance(args[0], int) else None
        super().__init__(args[-1])


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ids(tokenizer, text: str) -> list[int]:
    # Chat-templated text carries its own special tokens (TRL tokenizes it without adding any).
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def assistant_opener_ids(tokenizer) -> list[int]:
    """The token ids that open an assistant turn in ``tokenizer``'s chat template (the end of a prompt).

    Raises :class:`PromptBoundaryError` when the tokenizer has no chat template or the template does not mark
    assistant turns with a fixed token sequence that never occurs in a user turn.

    Example:
        >>> from dmoerm_trl.testing_utils import make_tiny_tokenizer
        >>> make_tiny_tokenizer().decode(assistant_opener_ids(make_tiny_tokenizer()))
        '<|im_start|>assistant\\n'
    """
    if not getattr(tokenizer, "chat_template", None):
        raise PromptBoundaryError(
            f"the tokenizer ({type(tokenizer).__name__}) has no chat template, so the end of the prompt cannot be "
            "found in token ids; set tokenizer.chat_template (e.g. copy one from an instruct model)"
        )
    user = [{"role": "user", "content": _USER_SENTINEL}]
    full_messages = user + [{"role": "assistant", "content": _ASSISTANT_SENTINEL}]
    try:
        prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=False)
        opened_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(full_messages, tokenize=False)
    except Exception as error:  # a template that cannot render one user + one assistant turn
        raise PromptBoundaryError(
            f"the chat template of {type(tokenizer).__name__} cannot render a user turn and an assistant turn "
            f"({type(error).__name__}: {error}), so the end of the prompt cannot be found in token ids"
        ) from error
    if opened_text == prompt_text:  # no generation prompt in this template: the text before the sentinel answer
        opened_text = full_text[: full_text.find(_ASSISTANT_SENTINEL)]
    prompt, opened, full = _ids(tokenizer, prompt_text), _ids(tokenizer, opened_text), _ids(tokenizer, full_text)
    start = _common_prefix_length(prompt, opened)
    # The part of the generation prompt that a real assistant turn also starts with, token for token (a last
    # token that merges with the answer's first one is dropped).
    stop = min(len(opened), _common_prefix_length(opened, full))
    opener = opened[start:stop]
    if not opener:
        raise PromptBoundaryError(
            f"the chat template of {type(tokenizer).__name__} does not open assistant turns with a fixed token "
            "sequence, so the end of the prompt cannot be found in token ids; score with categories= (router "
            "bypass) or pass prompt_mask= to the model"
        )
    if _last_match_end(torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), opener)[0] >= 0:
        raise PromptBoundaryError(
            f"the assistant-turn opener {tokenizer.decode(opener)!r} of this chat template also occurs in a user "
            "turn, so it cannot mark the end of the prompt; score with categories= or pass prompt_mask="
        )
    return opener


def _last_match_end(input_ids: torch.Tensor, attention_mask: torch.Tensor, opener: list[int]) -> torch.Tensor:
    """``(B,)`` index one past the last occurrence of ``opener`` among real tokens of each row; ``-1`` where none."""
    batch, length = input_ids.shape
    width = len(opener)
    if length < width:
        return torch.full((batch,), -1, dtype=torch.long, device=input_ids.device)
    pattern = torch.as_tensor(opener, dtype=input_ids.dtype, device=input_ids.device)
    windows = input_ids.unfold(1, width, 1)  # (B, T - m + 1, m), a view
    real = attention_mask.bool().unfold(1, width, 1).all(-1)
    match = (windows == pattern).all(-1) & real
    starts = torch.arange(match.shape[1], device=input_ids.device).expand_as(match)
    last = torch.where(match, starts, torch.full_like(starts, -1)).max(-1).values
    return torch.where(last >= 0, last + width, last)


def prompt_mask_from_opener(input_ids: torch.Tensor, attention_mask: torch.Tensor, opener: list[int]):
    """``(prompt_mask (B, T) long, found (B,) bool)``: the real tokens up to and including the last ``opener``.

    Works for left, right and mixed padding (only real tokens count). Rows without the opener get an all-zero mask
    and ``found=False``.

    Example:
        >>> ids = torch.tensor([[5, 1, 2, 7, 1, 2, 8, 9]])
        >>> prompt_mask_from_opener(ids, torch.ones_like(ids), [1, 2])[0].tolist()
        [[1, 1, 1, 1, 1, 1, 0, 0]]
    """
    end = _last_match_end(input_ids, attention_mask, opener)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    mask = (positions.unsqueeze(0) < end.unsqueeze(1)) & attention_mask.bool()
    return mask.long(), end >= 0


def prompt_prefix(ids: list[int], opener: list[int]) -> list[int] | None:
    """The tokens of one sequence up to and including its last ``opener`` (``None`` when absent): what the router
    reads. Used to build router training examples from tokenized conversations.

    Example:
        >>> prompt_prefix([5, 1, 2, 7, 1, 2, 8, 9], [1, 2])
        [5, 1, 2, 7, 1, 2]
    """
    tensor = torch.tensor([list(ids)], dtype=torch.long)
    end = int(_last_match_end(tensor, torch.ones_like(tensor), opener)[0])
    return list(ids[:end]) if end >= 0 else None


def router_prompt_mask(config, input_ids, attention_mask, prompt_mask=None) -> torch.Tensor:
    """``(N, T)`` mask of the tokens a DMoERM's router reads: ``prompt_mask`` (checked, restricted to real tokens)
    when given, else the real tokens up to and including the last ``config.assistant_opener_ids`` of each row, or
    every real token when the config records no opener. A row without its prompt is a :class:`PromptBoundaryError`
    naming the row and the fix.

    Example:
        >>> from types import SimpleNamespace
        >>> ids = torch.tensor([[5, 1, 2, 8, 9]])
        >>> router_prompt_mask(SimpleNamespace(assistant_opener_ids=[1, 2]), ids, torch.ones_like(ids)).tolist()
        [[1, 1, 1, 0, 0]]
    """
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
    opener = config.assistant_opener_ids
    if not opener:
        return attention_mask
    mask, found = prompt_mask_from_opener(input_ids, attention_mask, opener)
    if not bool(found.all()):
        row = int((~found).nonzero()[0])
        raise PromptBoundaryError(
            row,
            f"row {row} of the batch does not contain the assistant-turn opener "
            f"{getattr(config, 'assistant_opener_text', None)!r} (token ids {opener}), so its prompt cannot be told "
            "from its response and the router (which reads the prompt only) cannot route it. Fix: build the text "
            "with the tokenizer's chat template (the conversation ending with the assistant response), or pass "
            "prompt_mask= (1 on prompt tokens) or categories= (bypass the router); in GRPO/RLOO use conversational "
            "prompts, or reward_funcs=[RewardScorer(model, tokenizer).as_reward_function()] for text prompts",
        )
    return mask
