"""Small rule-based reward functions with TRL's signature, to combine with a reward model in GRPO/RLOO.

Example:
    >>> from dmoerm_trl.rl.rewards import length_penalty
    >>> length_penalty(prompts=["Hi"], completions=["Hello there!"], target_length=10)
    [-0.2]
"""

from __future__ import annotations

from .scoring import completion_text


def length_penalty(prompts=None, completions=(), target_length: int = 200, **kwargs) -> list[float]:
    """``-|len(completion) - target_length| / target_length`` in characters: 0 at the target, negative away from it."""
    return [-abs(len(completion_text(c)) - target_length) / target_length for c in completions]


def ends_with_punctuation(prompts=None, completions=(), **kwargs) -> list[float]:
    """1.0 when the completion ends a sentence (``.``, ``!``, ``?``, ``。``), else 0.0."""
    return [1.0 if completion_text(c).rstrip().endswith((".", "!", "?", "。")) else 0.0 for c in completions]
