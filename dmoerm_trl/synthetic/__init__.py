"""A synthetic ground-truth world for the fidelity benchmark and the demo (see ``docs/fidelity.md``).

- :mod:`~dmoerm_trl.synthetic.world`: :class:`SyntheticWorld`: categories, capabilities, measurement, gold formulas
- :mod:`~dmoerm_trl.synthetic.generator`: :func:`generate_files` / :func:`generate_dataset`: the seeded data set
  (mtmc-rlhf records with "human" ranks flipped at a known rate, a clean held-out test split, the category set)
- :mod:`~dmoerm_trl.synthetic.judge`: :class:`CapabilityJudge` and :func:`capability_judge_server`: an
  OpenAI-compatible judge on 127.0.0.1 that answers the labeler's prompts from the measured attributes, with a
  known flip rate
- :mod:`~dmoerm_trl.synthetic.gold_reward`: :class:`GoldReward`: the gold score as a TRL-style reward function

Example:
    >>> import tempfile
    >>> from dmoerm_trl.synthetic import GoldReward, generate_files
    >>> paths = generate_files(tempfile.mkdtemp(), pairs_per_category=10, test_pairs_per_category=4)
    >>> gold = GoldReward()
    >>> gold(prompts=["What is the capital of France?"] * 2, completions=["Paris.", "The capital of France is Paris."])
    [3.5, 4.5]
"""

from __future__ import annotations

__all__ = [
    "CapabilityJudge",
    "GoldReward",
    "SyntheticDataConfig",
    "SyntheticDataset",
    "SyntheticWorld",
    "capability_judge_server",
    "generate_dataset",
    "generate_files",
    "write_dataset",
]

_LOCATIONS = {
    "SyntheticWorld": "world",
    "SyntheticDataConfig": "generator",
    "SyntheticDataset": "generator",
    "generate_files": "generator",
    "generate_dataset": "generator",
    "write_dataset": "generator",
    "CapabilityJudge": "judge",
    "capability_judge_server": "judge",
    "GoldReward": "gold_reward",
}


def __getattr__(name):  # lazy: importing the package stays cheap
    if name in _LOCATIONS:
        import importlib

        return getattr(importlib.import_module(f".{_LOCATIONS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
