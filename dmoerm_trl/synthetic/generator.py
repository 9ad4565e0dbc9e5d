"""The generator: a seeded, deterministic multi-category preference data set with known ground truth.

Every record is one conversation with two responses in the mtmc-rlhf schema (``src``, ``tgt``, ``response``,
``rank``, ``label`` with the Chinese category name), so :func:`dmoerm_trl.data.load_preference_pairs` reads it as
is. Side fields carry the truth: ``gold`` (the two gold scores), ``gold_rank``, ``capability_scores`` (per
response), ``category_key``, ``item``, ``human_flipped``, ``record_id``.

- ``train.jsonl``: "human" ranks: the gold preference, flipped with probability ``human_flip_rate`` (default 0.3,
  the paper's 60-75% annotator agreement).
- ``test.jsonl``: clean gold ranks, on held-out prompts (facts, situations, tasks, persona/trouble combinations
  that never occur in ``train.jsonl``).
- ``heldout_prompts.jsonl``: the distinct test conversations (for best-of-n and RL evaluation).
- ``categories.yaml``: the category set for ``dmoerm label`` / ``dmoerm train`` (``--categories``).
- ``world.json``: the configuration, the gold formulas and the measured counts and flip rates.

Example:
    >>> import tempfile
    >>> from dmoerm_trl.synthetic.generator import SyntheticDataConfig, generate_dataset, write_dataset
    >>> dataset = generate_dataset(SyntheticDataConfig(pairs_per_category=20, test_pairs_per_category=5, seed=1))
    >>> len(dataset.train), len(dataset.test), sorted(dataset.summary["categories"])
    (80, 20, ['chitchat', 'objective_qa', 'roleplay', 'text_creation'])
    >>> paths = write_dataset(dataset, tempfile.mkdtemp())
    >>> from dmoerm_trl.data import load_preference_pairs
    >>> len(load_preference_pairs(paths["train"], categories=paths["categories"]))
    80
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .world import DEFAULT_CATEGORIES, PromptInfo, SyntheticWorld

__all__ = ["SyntheticDataConfig", "SyntheticDataset", "generate_dataset", "generate_files", "write_dataset"]

FILES = {
    "train": "train.jsonl",
    "test": "test.jsonl",
    "heldout_prompts": "heldout_prompts.jsonl",
    "categories": "categories.yaml",
    "world": "world.json",
}


@dataclass
class SyntheticDataConfig:
    """Options of the synthetic data set (``python -m dmoerm_trl.synthetic.generate --help`` lists them)."""

    pairs_per_category: int = field(default=300, metadata={"help": "Training pairs per category (one per record)."})
    test_pairs_per_category: int = field(
        default=100, metadata={"help": "Clean, gold-labelled test pairs per category (on held-out prompts)."}
    )
    categories: list[str] = field(
        default_factory=lambda: list(DEFAULT_CATEGORIES),
        metadata={"help": "Categories: objective_qa, chitchat, text_creation, roleplay (any subset)."},
    )
    human_flip_rate: float = field(
        default=0.3, metadata={"help": "Probability that a training pair's human rank contradicts the gold."}
    )
    heldout_fraction: float = field(
        default=0.2, metadata={"help": "Fraction of each category's prompts (facts, tasks...) held out for testing."}
    )
    multi_turn_probability: float = field(
        default=0.3, metadata={"help": "Probability that a QA or chit-chat conversation starts with a greeting turn."}
    )
    seed: int = field(default=0, metadata={"help": "Seed: the same seed and options give byte-identical files."})

    def __post_init__(self):
        if self.pairs_per_category < 0 or self.test_pairs_per_category < 0:
            raise ValueError("pairs_per_category and test_pairs_per_category must be >= 0.")
        if not 0.0 <= self.human_flip_rate <= 1.0:
            raise ValueError(f"human_flip_rate={self.human_flip_rate}: must be in [0, 1].")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction={self.heldout_fraction}: must be in (0, 1).")
        if not 0.0 <= self.multi_turn_probability <= 1.0:
            raise ValueError(f"multi_turn_probability={self.multi_turn_probability}: must be in [0, 1].")
        if isinstance(self.categories, str):
            self.categories = [c.strip() for c in self.categories.split(",") if c.strip()]
        if not self.categories:
            raise ValueError("categories: give at least one category.")


@dataclass
class SyntheticDataset:
    """Generated records (mtmc-rlhf dicts with truth side fields) and a summary of what was generated."""

    config: SyntheticDataConfig
    world: SyntheticWorld
    train: list[dict]
    test: list[dict]
    summary: dict

    def heldout_prompts(self) -> list[dict]:
        """Distinct test conversations: ``{"prompt": messages, "category", "item"}`` in first-seen order."""
        seen, out = set(), []
        for record in self.test:
            messages = _messages(record["src"], record["tgt"])
            key = json.dumps(messages, ensure_ascii=False)
            if key not in seen:
                seen.add(key)
                out.append({"prompt": messages, "category": record["category_key"], "item": record["item"]})
        return out


def _messages(src: Sequence[str], tgt: Sequence[str]) -> list[dict[str, str]]:
    out = []
    for turn, user in enumerate(src):
        out.append({"role": "user", "content": user})
        if turn < len(tgt):
            out.append({"role": "assistant", "content": tgt[turn]})
    return out


def _rng(seed: int, *parts: str) -> random.Random:
    digest = hashlib.sha256(":".join([str(seed), *parts]).encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def _split_units(world, seed: int, fraction: float) -> tuple[list[str], list[str]]:
    units = list(world.units())
    _rng(seed, world.name, "units").shuffle(units)
    n_test = min(len(units) - 1, max(1, math.ceil(fraction * len(units))))
    return sorted(units[n_test:]), sorted(units[:n_test])


def _make_record(
    world,
    synthetic_world,
    unit: str,
    rng: random.Random,
    config: SyntheticDataConfig,
    split: str,
    index: int,
    counters: Counter,
) -> dict:
    for _ in range(1000):
        conversation = world.sample_conversation(unit, rng, config.multi_turn_probability)
        info = PromptInfo(world.name, conversation.item)
        first_plan = world.sample_plan(rng)
        first = world.render(conversation, first_plan, rng)
        first_eval = synthetic_world.evaluate(info, first)
        for _ in range(100):  # a second response with a different gold score
            second_plan = world.sample_plan(rng)
            second = world.render(conversation, second_plan, rng)
            second_eval = synthetic_world.evaluate(info, second)
            if second != first and abs(second_eval.gold - first_eval.gold) > 1e-6:
                break
            counters["resampled_ties"] += 1
        else:
            continue
        break
    else:  # pragma: no cover - every category has many distinct gold levels
        raise RuntimeError(f"{world.name}: could not sample two responses with different gold scores")
    gold = [first_eval.gold, second_eval.gold]
    gold_rank = [1, 2] if gold[0] > gold[1] else [2, 1]
    flipped = split == "train" and rng.random() < config.human_flip_rate
    counters["flipped"] += flipped
    return {
        "src": list(conversation.src),
        "tgt": list(conversation.tgt),
        "response": [first, second],
        "rank": gold_rank[::-1] if flipped else gold_rank,
        "label": world.zh_name,
        "category_key": world.name,
        "item": conversation.unit,
        "record_id": f"{world.name}-{split}-{index:06d}",
        "gold": gold,
        "gold_rank": gold_rank,
        "capability_scores": [first_eval.capability_scores, second_eval.capability_scores],
        "human_flipped": flipped,
    }


def generate_dataset(config: SyntheticDataConfig | None = None, **overrides) -> SyntheticDataset:
    """Generate the train and test records (in memory). Same config, same records, on any machine."""
    if config is None:
        config = SyntheticDataConfig(**overrides)
    elif overrides:
        config = SyntheticDataConfig(**(asdict(config) | overrides))
    world = SyntheticWorld(config.categories)
    train, test, per_category = [], [], {}
    for name, category in world.worlds.items():
        train_units, test_units = _split_units(category, config.seed, config.heldout_fraction)
        stats = {"train_units": len(train_units), "test_units": len(test_units)}
        for split, units, count, out in (
            ("train", train_units, config.pairs_per_category, train),
            ("test", test_units, config.test_pairs_per_category, test),
        ):
            rng = _rng(config.seed, name, split)
            counters: Counter = Counter()
            records = [
                _make_record(category, world, rng.choice(units), rng, config, split, i, counters) for i in range(count)
            ]
            out += records
            stats[f"{split}_pairs"] = count
            stats[f"{split}_resampled_ties"] = counters["resampled_ties"]
            stats[f"{split}_conversations"] = len({json.dumps([r["src"], r["tgt"]]) for r in records})
            if split == "train":
                stats["human_flips"] = counters["flipped"]
                stats["human_flip_rate_measured"] = round(counters["flipped"] / count, 4) if count else None
        per_category[name] = stats
    flips = sum(s["human_flips"] for s in per_category.values())
    summary = {
        "config": asdict(config),
        "categories": per_category,
        "train_pairs": len(train),
        "test_pairs": len(test),
        "human_flip_rate_measured": round(flips / len(train), 4) if train else None,
    }
    return SyntheticDataset(config, world, train, test, summary)


def write_dataset(dataset: SyntheticDataset, output_dir: str | os.PathLike) -> dict[str, str]:
    """Write the files of the module docstring into ``output_dir`` (each atomically); returns their paths."""
    from ..data import write_jsonl_atomic
    from ..utils.io import atomic_write_text

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    paths = {name: str(output / filename) for name, filename in FILES.items()}
    write_jsonl_atomic(dataset.train, paths["train"])
    write_jsonl_atomic(dataset.test, paths["test"])
    write_jsonl_atomic(dataset.heldout_prompts(), paths["heldout_prompts"])
    atomic_write_text(paths["categories"], dataset.world.category_yaml())
    world_info = {
        "description": "Synthetic ground-truth preference world of dmoerm-trl (docs/fidelity.md).",
        "files": {name: FILES[name] for name in FILES},
        "category_definitions": dataset.world.describe(),
        **dataset.summary,
    }
    atomic_write_text(paths["world"], json.dumps(world_info, ensure_ascii=False, indent=2) + "\n")
    return paths


def generate_files(output_dir: str | os.PathLike, **options) -> dict[str, str]:
    """Generate with :class:`SyntheticDataConfig` ``options`` and write into ``output_dir``; returns the paths.

    Example:
        >>> import tempfile
        >>> from dmoerm_trl.synthetic import generate_files
        >>> paths = generate_files(tempfile.mkdtemp(), pairs_per_category=10, test_pairs_per_category=4, seed=3)
        >>> sorted(paths)
        ['categories', 'heldout_prompts', 'test', 'train', 'world']
    """
    return write_dataset(generate_dataset(SyntheticDataConfig(**options)), output_dir)
