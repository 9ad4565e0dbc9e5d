"""One padding helper for token-id batches (the scorers, the router, phase 3's feature pass, serving, the judge)."""

from __future__ import annotations

from collections.abc import Sequence


def pad_sequences(sequences: Sequence[Sequence[int]], pad_token_id: int, side: str = "right"):
    """``(input_ids, attention_mask)``, two ``(N, T)`` long tensors: the sequences padded to the longest with
    ``pad_token_id``, on the right (as TRL's reward collator: scoring, training) or the left (generation: every
    prompt ends where generation starts).

    Example:
        >>> ids, mask = pad_sequences([[5, 6, 7], [8]], pad_token_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
        >>> pad_sequences([[5, 6, 7], [8]], 0, side="left")[0].tolist()
        [[5, 6, 7], [0, 0, 8]]
    """
    import torch

    if side not in ("right", "left"):
        raise ValueError(f"side={side!r}: use 'right' or 'left'")
    length = max((len(ids) for ids in sequences), default=0)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(0, len(ids)) if side == "right" else slice(length - len(ids), length)
        input_ids[row, span] = torch.as_tensor(list(ids), dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask
