"""The gold reward of the synthetic world as a callable, for best-of-n, RL and the overoptimization curves.

:class:`GoldReward` recomputes each response's capability scores from its text and combines them with its
category's gold formula (``docs/fidelity.md``). It accepts every form the project's RL code uses:

- TRL's reward-function signature ``gold(prompts=..., completions=..., **kwargs) -> list[float]`` (GRPO/RLOO
  ``reward_funcs``, :class:`~dmoerm_trl.rl.RewardScorer`, :class:`~dmoerm_trl.rl.BestOfNSampler`,
  :class:`~dmoerm_trl.rl.GoldRewardCallback`); prompts are strings or message lists, completions strings or
  ``[{"role": "assistant", "content": ...}]``;
- ``gold([(prompt, response), ...])``: pairs;
- ``gold(["<prompt and response as one text>", ...])``: flat texts (plain or chat-templated), split after the last
  user turn.

Example:
    >>> from dmoerm_trl.synthetic.gold_reward import GoldReward
    >>> gold = GoldReward()
    >>> prompt = [{"role": "user", "content": "I caught a cold and I'm stuck in bed."}]
    >>> gold(prompts=[prompt, prompt], completions=[
    ...     "I'm sorry you're dealing with this. A cold can knock you out for a few days. Do you have soup?",
    ...     "- Rest.\\n- Drink water.\\n- Take medicine."])
    [3.65, 0.0]
    >>> gold([("What is the capital of France?", "Paris.")])
    [3.5]
    >>> gold(["User: What is the capital of France?\\nAssistant: The capital of France is Lyon."])
    [1.5]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .world import SyntheticWorld, UnknownPromptError

__all__ = ["GoldReward"]


def _completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and all(isinstance(m, dict) for m in completion):
        return "".join(str(m.get("content", "")) for m in completion)
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


class GoldReward:
    """The gold score of (prompt, response) pairs of the synthetic world.

    Args:
        world: a :class:`SyntheticWorld` (default: all categories).
        on_unknown: ``"error"`` (default) raises :class:`~dmoerm_trl.synthetic.world.UnknownPromptError` for a
            prompt that is not from the world; ``"nan"`` scores it NaN (TRL's GRPO ignores NaN rewards).
    """

    __name__ = "synthetic_gold"  # the name TRL and RewardScorer log

    def __init__(self, world: SyntheticWorld | None = None, *, on_unknown: str = "error"):
        if on_unknown not in ("error", "nan"):
            raise ValueError(f"on_unknown={on_unknown!r}: use 'error' or 'nan'.")
        self.world = world or SyntheticWorld()
        self.on_unknown = on_unknown

    def __repr__(self) -> str:
        return f"GoldReward(categories={list(self.world.worlds)})"

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        if completions is None:
            if prompts is None:
                raise TypeError(
                    "GoldReward needs prompts= and completions=, a list of (prompt, response) pairs, "
                    "or a list of texts"
                )
            items = list(prompts)
            if all(isinstance(item, str) for item in items):
                return self.score_texts(items)
            return self.score_pairs(items)
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(
                f"{len(prompts)} prompts but {len(completions)} completions: pass one prompt per completion"
            )
        return self.score_pairs(list(zip(prompts, completions)))

    def _score(self, prompt, response: str) -> float:
        try:
            return self.world.gold(prompt, response)
        except UnknownPromptError:
            if self.on_unknown == "nan":
                return math.nan
            raise

    def score_pairs(self, pairs: Sequence) -> list[float]:
        """Gold scores of ``(prompt, response)`` pairs."""
        out = []
        for index, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"pair {index}: expected (prompt, response), got {type(pair).__name__}")
            out.append(self._score(pair[0], _completion_text(pair[1])))
        return out

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Gold scores of flat ``prompt + response`` texts (split after the last user turn of the world)."""
        out = []
        for text in texts:
            try:
                conversation, response = self.world.split_text(text)
            except UnknownPromptError:
                if self.on_unknown == "nan":
                    out.append(math.nan)
                    continue
                raise
            out.append(self._score(conversation, response))
        return out

    def capability_scores(self, prompts, completions) -> list[dict[str, float]]:
        """Per-capability scores of each completion (the world's truth, before the gold formula)."""
        return [self.world.capability_scores(p, _completion_text(c)) for p, c in zip(prompts, completions)]

    def categories_of(self, prompts) -> list[str]:
        """The category of each prompt."""
        return [self.world.identify(p).category for p in prompts]
