"""What happens to a conversation longer than a reward model accepts: its **end is kept**.

A reward is a judgement of the final response, and the response is at the end of the text, so a conversation longer
than ``max_length`` tokens loses its *oldest* tokens (left truncation): the first turns of the prompt go, the last
user turn's end, the assistant opener and the whole response stay. The special tokens the tokenizer adds at the start
(``[CLS]``, ``<s>``) are kept in front; the ones at the end (``[SEP]``, EOS) are kept with the end. Every truncated
conversation is flagged (``truncated: true`` in ``compute_rewards``/``dmoerm score`` output) and counted (a warning
in the log, the summary line of ``dmoerm score``, ``counts`` in ``dmoerm eval``'s report,
``RewardScorer.num_truncated``).

The user's tokenizer is never modified (its ``truncation_side`` stays what it was): texts are tokenized in full and
the ids are cut here.

Example:
    >>> from dmoerm_trl.truncation import keep_end
    >>> keep_end([101, 5, 6, 7, 8, 102], 4, keep_leading=1)
    [101, 7, 8, 102]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def keep_end(ids: Sequence[int], max_length: int | None, keep_leading: int = 0) -> list[int]:
    """The last tokens of ``ids`` so that at most ``max_length`` remain, after ``keep_leading`` kept first tokens.

    Example:
        >>> keep_end([1, 2, 3, 4, 5], 3)
        [3, 4, 5]
    """
    ids = list(ids)
    if max_length is None or len(ids) <= max_length:
        return ids
    if max_length <= keep_leading:
        raise ValueError(f"max_length={max_length} leaves no room after {keep_leading} leading special token(s)")
    return ids[:keep_leading] + ids[len(ids) - (max_length - keep_leading) :]


def leading_special_tokens(tokenizer, ids: Sequence[int], add_special_tokens: bool) -> int:
    """How many of the first ``ids`` are special tokens the tokenizer itself put there (``[CLS]``, BOS)."""
    if not add_special_tokens or not ids:
        return 0
    added = tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. [CLS, SEP], [BOS] or []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    count = 0
    for token, expected in zip(ids, added):
        if token != expected or token not in special:
            break
        count += 1
    # An encoder's empty encoding is [CLS, SEP]: only the tokens before the first content token lead.
    return min(count, max(len(added) - 1, 0)) if len(added) > 1 else count


def encode_keep_end(
    tokenizer, texts: Sequence[str], max_length: int | None, add_special_tokens: bool = False
) -> tuple[list[list[int]], list[bool]]:
    """Token ids of ``texts`` (each at most ``max_length``, its end kept) and one ``truncated`` flag per text.

    Example:
        >>> ids, truncated = encode_keep_end(tokenizer, ["a long chat ..."], max_length=512)  # doctest: +SKIP
    """
    if not texts:  # a fast tokenizer given [] raises IndexError (every line of a `dmoerm score` file categorised)
        return [], []
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
    ids, flags = [], []
    for row in encoded:
        too_long = max_length is not None and len(row) > max_length
        if too_long:
            row = keep_end(row, max_length, leading_special_tokens(tokenizer, row, add_special_tokens))
        ids.append(list(row))
        flags.append(too_long)
    return ids, flags


def keep_end_of_batch(input_ids, attention_mask, max_length: int):
    """``(input_ids, attention_mask, truncated)`` of a padded batch cut to ``max_length`` columns, each row keeping its
    last ``max_length`` real tokens (rows come out left-padded; shorter rows are unchanged apart from padding).

    Example:
        >>> import torch
        >>> ids, mask, cut = keep_end_of_batch(torch.tensor([[1, 2, 3, 0]]), torch.tensor([[1, 1, 1, 0]]), 2)
        >>> ids.tolist(), cut.tolist()
        ([[2, 3]], [True])
    """
    import torch

    truncated = attention_mask.sum(-1) > max_length
    # A stable sort on the mask moves each row's padding in front of its real tokens, in order: left padding.
    order = torch.sort(attention_mask.long(), dim=-1, stable=True).indices
    input_ids = input_ids.gather(-1, order)[:, -max_length:]
    attention_mask = attention_mask.gather(-1, order)[:, -max_length:]
    return input_ids, attention_mask, truncated


def warn_truncated(what: str, truncated: int, total: int, max_length: int | None) -> None:
    """Log how many of ``total`` inputs lost their oldest tokens (nothing when none did)."""
    if truncated:
        logger.warning(
            "%s: %d of %d conversation(s) are longer than %s tokens: scored on their last %s tokens (the oldest "
            "prompt tokens were dropped, the response kept)",
            what,
            truncated,
            total,
            max_length,
            max_length,
        )
