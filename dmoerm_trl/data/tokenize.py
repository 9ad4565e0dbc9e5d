"""Tokenizing preference pairs exactly as TRL's RewardTrainer does, per format, and what the router reads of them.

Conversational pairs: the chat template with each row's ``tools``/``chat_template_kwargs``. Text pairs (TRL's
standard format): ``prompt + answer + EOS`` through the tokenizer, no template, plus the prompt's token count (text
has no assistant-turn opener to end the prompt, so the router gets its prompt this way, never the response).
"""

from __future__ import annotations

import json
from typing import Any

from .errors import DataReport, TrainingDataError


def chat_template_kwargs(row) -> dict[str, Any]:
    """The keyword arguments TRL's RewardTrainer passes to ``apply_chat_template`` for one row: its ``tools`` (JSON
    text or a list) and its ``chat_template_kwargs`` (unset entries, which Arrow fills with ``None``, left out).

    Example:
        >>> chat_template_kwargs({"tools": '[{"type": "function"}]', "chat_template_kwargs": {"enable_thinking": False}})
        {'tools': [{'type': 'function'}], 'enable_thinking': False}
    """
    kwargs: dict[str, Any] = {}
    tools = row.get("tools")
    if tools:
        kwargs["tools"] = json.loads(tools) if isinstance(tools, str) else tools
    kwargs.update({key: value for key, value in (row.get("chat_template_kwargs") or {}).items() if value is not None})
    return kwargs


def tokenize_messages(tokenizer, messages: list[dict[str, str]], **template_kwargs) -> list[int]:
    """Token ids of a conversation, as TRL's RewardTrainer tokenizes conversational rows (the chat template, with the
    row's ``tools``/``chat_template_kwargs``)."""
    return list(
        tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **template_kwargs)["input_ids"]
    )


def tokenize_text(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """``(ids, prompt token count)`` of a text pair's side, as TRL's RewardTrainer tokenizes text rows: ``prompt +
    answer`` plus the EOS token (unless the answer ends with it), ``tokenizer(text)`` with its special tokens, no chat
    template. The count is what the router reads (text has no assistant-turn opener to end the prompt): the tokens
    before the first one that starts at or after the prompt's last character (a fast tokenizer's offsets), else the
    tokens the prompt alone shares with the whole.

    Example:
        >>> from dmoerm_trl.testing_utils import make_tiny_tokenizer
        >>> ids, count = tokenize_text(make_tiny_tokenizer(), "Q: 2+2?", " A: 4")
        >>> 0 < count < len(ids)
        True
    """
    eos = tokenizer.eos_token
    if eos and not answer.endswith(eos):
        answer = answer + eos
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text=prompt + answer, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        limit = len(prompt)
        count = next((i for i, (begin, end) in enumerate(encoded["offset_mapping"]) if limit <= begin < end), len(ids))
        return ids, count
    ids = list(tokenizer(text=prompt + answer)["input_ids"])
    alone = list(tokenizer(text=prompt)["input_ids"])
    count = 0
    while count < min(len(ids), len(alone)) and ids[count] == alone[count]:
        count += 1
    return ids, count


def routing_prompt(row, opener: list[int] | None, what: str = "pair") -> list[int]:
    """What the router reads of one tokenized pair: its prompt tokens, never the response. Text pairs (TRL's
    standard format) have no chat-template opener, so their prompt is the first ``chosen_prompt_length`` tokens;
    conversational pairs end the prompt at the model's assistant-turn ``opener`` (``config.assistant_opener_ids``),
    or, for a model without one, use the templated prompt (``prompt_ids``).

    Example:
        >>> routing_prompt({"chosen_ids": [5, 6, 7], "chosen_prompt_length": 2}, opener=[1, 2])
        [5, 6]
    """
    from ..models.dmoerm._prompt_boundary import PromptBoundaryError
    from ..trainers.router_trainer import routing_prompt_ids

    if "chosen_prompt_length" in row:
        count = row["chosen_prompt_length"]
        if count <= 0:
            raise PromptBoundaryError(
                f"{what}: no prompt token is left (the prompt was truncated away), so it cannot be routed on its "
                "prompt. Fix: raise max_length, or shorten the response"
            )
        return list(row["chosen_ids"][:count])
    if opener:
        return routing_prompt_ids(row["chosen_ids"], opener, what)
    return list(row["prompt_ids"])


def routing_prompts(pairs, opener: list[int] | None, what: str = "pair") -> list[list[int]]:
    """:func:`routing_prompt` of every row of a tokenized pairs dataset (rows named ``f"{what} {i}"`` in errors)."""
    wanted = [c for c in ("chosen_ids", "chosen_prompt_length", "prompt_ids") if c in pairs.column_names]
    return [routing_prompt(row, opener, f"{what} {i}") for i, row in enumerate(pairs.select_columns(wanted))]


def tokenize_pairs(dataset, tokenizer, max_length: int | None, what: str, report: DataReport | None = None):
    """Add ``prompt_ids``, ``chosen_ids``, ``rejected_ids``; drop (and count) pairs longer than ``max_length``.

    Conversational pairs get the chat template (with each row's ``tools``/``chat_template_kwargs``); text pairs
    (TRL's standard format) are tokenized as text with an EOS, no template, as TRL's RewardTrainer does, and also get
    ``chosen_prompt_length``/``rejected_prompt_length``: how many leading tokens are prompt (what the router reads,
    see :func:`routing_prompts`); their ``prompt_ids`` are the first ``chosen_prompt_length`` chosen tokens.
    """
    from .formats import is_text_pairs

    text = is_text_pairs(dataset)
    if not text and tokenizer.chat_template is None:
        raise TrainingDataError(
            f"the tokenizer ({type(tokenizer).__name__}) has no chat template, but {what} is conversational; set "
            "tokenizer.chat_template (e.g. copy one from an instruct model) before training"
        )

    def tokenize(row):
        if text:
            chosen, chosen_count = tokenize_text(tokenizer, row["prompt"], row["chosen"])
            rejected, rejected_count = tokenize_text(tokenizer, row["prompt"], row["rejected"])
            return {
                "prompt_ids": chosen[:chosen_count],
                "chosen_ids": chosen,
                "rejected_ids": rejected,
                "chosen_prompt_length": chosen_count,
                "rejected_prompt_length": rejected_count,
            }
        kwargs = chat_template_kwargs(row)
        return {
            "prompt_ids": tokenize_messages(tokenizer, row["prompt"], **kwargs),
            "chosen_ids": tokenize_messages(tokenizer, row["prompt"] + row["chosen"], **kwargs),
            "rejected_ids": tokenize_messages(tokenizer, row["prompt"] + row["rejected"], **kwargs),
        }

    dataset = dataset.map(tokenize, desc=f"Tokenizing {what}")
    if max_length is not None:
        before = len(dataset)
        dataset = dataset.filter(
            lambda row: len(row["chosen_ids"]) <= max_length and len(row["rejected_ids"]) <= max_length,
            desc=f"{what}: dropping pairs > {max_length} tokens",
        )
        dropped = before - len(dataset)
        if dropped and report is not None:
            report.counts[report.key(what, "pairs_longer_than_max_length")] += dropped
            report.warn(
                f"{what}: dropped {dropped} of {before} pairs longer than max_length={max_length} tokens. Fix: raise "
                "max_length (up to the backbone's limit) if they matter."
            )
    return dataset
