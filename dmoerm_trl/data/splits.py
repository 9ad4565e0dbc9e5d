"""Preparing preference data for the DMoERM phases: categories checked against the model, splits, tokenization.

* :func:`resolve_categories` maps each row's category to one of the model's categories (keys, aliases, the paper's
  Chinese names); rows of other categories are dropped, counted, and reported (an error if nothing matches).
* :func:`split_by_conversation` splits a category's human pairs into validation / phase 1 (task) / phase 3
  (aggregator) by *conversation*, so pairs built from the same ranked list never straddle two splits.
* :func:`select_capability_labels` checks a capability label file against the model and splits it per expert
  (labels on validation conversations validate the expert; they never train anything).
* (tokenizing: :mod:`dmoerm_trl.data.tokenize`) :func:`tokenize_pairs` adds ``prompt_ids``/``chosen_ids``/``rejected_ids`` exactly as TRL's RewardTrainer would
  (chat template for conversational rows), and drops (counting) pairs longer than ``max_length``.

Example:
    >>> from dmoerm_trl.data import load_preference_pairs
    >>> from dmoerm_trl.data.splits import split_by_conversation
    >>> pairs = load_preference_pairs("tests/fixtures/mtmc_tiny.jsonl")  # doctest: +SKIP
    >>> splits = split_by_conversation(pairs, validation_ratio=0.1, task_ratio=0.6, seed=0)  # doctest: +SKIP
    >>> sorted(splits["objective_qa"])  # doctest: +SKIP
    ['aggregator', 'task', 'validation']
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from typing import Any

from .errors import DataReport, TrainingDataError
from .formats import conversation_key

logger = logging.getLogger(__name__)

SPLITS = ("task", "aggregator", "validation")


def _ordered(keys, seed: int) -> list[str]:
    return sorted(set(keys), key=lambda key: hashlib.sha1(f"{seed}:{key}".encode()).hexdigest())


def resolve_categories(dataset, spec, model_categories: dict[str, list[str]], what: str, report: DataReport):
    """Map every row's ``category`` to a model category; drop (count, warn) rows of unknown categories.

    ``""`` (no category) is kept as is (the router assigns one later). Raises :class:`TrainingDataError` when no
    row matches the model at all (a file for another category set).
    """
    unknown: Counter = Counter()

    def resolve(name: str) -> str | None:
        if name == "" or name in model_categories:
            return name
        key = spec.resolve(name) if spec is not None else None
        if key in model_categories:
            return key
        unknown[name] += 1
        return None

    resolved = [resolve(name) for name in dataset["category"]]
    keep = [i for i, name in enumerate(resolved) if name is not None]
    if unknown:
        report.counts[report.key(what, "unknown_category_rows")] += sum(unknown.values())
        report.warn(
            f"{what}: skipped {sum(unknown.values())} of {len(dataset)} rows whose category is not one of the model's "
            f"({sorted(model_categories)}): {dict(unknown.most_common(5))}. Fix: add those categories to the "
            "category set (or as aliases in a category YAML), or drop the rows."
        )
    if len(dataset) and not keep:
        raise TrainingDataError(
            f"{what}: none of its {len(dataset)} rows belongs to a category of the model "
            f"({sorted(model_categories)}); its categories are {sorted(unknown)}. Fix: train with a category set that "
            "matches the data (categories: in the config), or relabel the data."
        )
    dataset = dataset.select(keep)
    return dataset.map(lambda row, i: {"category": resolved[keep[i]]}, with_indices=True, desc=f"{what}: categories")


def _split_groups(groups: list[str], validation_ratio: float, task_ratio: float) -> dict[str, list[str]]:
    n = len(groups)
    n_val = round(n * validation_ratio)
    if validation_ratio > 0 and n_val == 0 and n >= 3:
        n_val = 1  # a tiny category still gets one validation conversation
    rest = n - n_val
    n_task = min(max(round(rest * task_ratio), 1), rest - 1) if rest >= 2 else rest
    return {
        "validation": groups[:n_val],
        "task": groups[n_val : n_val + n_task],
        "aggregator": groups[n_val + n_task :],
    }


def split_by_conversation(pairs, validation_ratio: float, task_ratio: float, seed: int) -> dict[str, dict]:
    """``{category: {"task"|"aggregator"|"validation": [pair_id, ...]}}``, split by conversation per category.

    Rows with category ``""`` are not split (route them first). The split of a conversation depends only on its
    content, the seed and its category's conversation count, so reruns and resumes get the same split.
    """
    groups_by_category: dict[str, list[str]] = defaultdict(list)
    pair_ids_by_group: dict[tuple[str, str], list[str]] = defaultdict(list)
    for prompt, category, pair_id in zip(pairs["prompt"], pairs["category"], pairs["pair_id"]):
        if not category:
            continue
        key = conversation_key(prompt)
        if not pair_ids_by_group[(category, key)]:
            groups_by_category[category].append(key)
        pair_ids_by_group[(category, key)].append(pair_id)
    splits = {}
    for category, groups in groups_by_category.items():
        by_split = _split_groups(_ordered(groups, seed), validation_ratio, task_ratio)
        splits[category] = {
            name: [pid for key in by_split[name] for pid in pair_ids_by_group[(category, key)]] for name in SPLITS
        }
        splits[category]["conversations"] = {name: len(by_split[name]) for name in SPLITS}
    return splits


def rows_with_ids(dataset, pair_ids: list[str]):
    """The rows of ``dataset`` whose ``pair_id`` is in ``pair_ids`` (in dataset order)."""
    wanted = set(pair_ids)
    return dataset.select([i for i, pid in enumerate(dataset["pair_id"]) if pid in wanted])


def select_capability_labels(
    labels,
    model_categories: dict[str, list[str]],
    validation_conversations: set[str],
    min_labels: int,
    categories_to_train: list[str],
    report: DataReport,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per expert ``(category, capability)``: ``{"train": Dataset, "validation": Dataset}`` or a skip reason.

    Labels whose capability the model does not have are dropped (counted, warned); a file without a single matching
    label raises :class:`TrainingDataError`. Labels on human-validation conversations become the expert's
    validation set (and never train it); when there are none, a slice of the expert's own label conversations is
    held out instead. An expert with fewer than ``min_labels`` training labels is skipped (counted, warned).
    """
    unknown: Counter = Counter()
    rows_by_expert: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (category, capability) in enumerate(zip(labels["category"], labels["capability"])):
        if capability not in model_categories.get(category, []):
            unknown[f"{category}/{capability}"] += 1
            continue
        rows_by_expert[(category, capability)].append(i)
    if unknown:
        report.counts["capability_labels_unknown_capability_rows"] += sum(unknown.values())
        report.warn(
            f"capability labels: skipped {sum(unknown.values())} labels whose capability is not one of the model's "
            f"(e.g. {dict(unknown.most_common(5))}); the model's capabilities: {model_categories}. Fix: label with "
            "the same category set as training (dmoerm label --categories ...)."
        )
    if len(labels) and not rows_by_expert:
        raise TrainingDataError(
            f"the capability label file does not match the model: none of its {len(labels)} labels names a "
            f"(category, capability) of the model {model_categories}; it has {sorted(unknown)[:10]}. Fix: relabel "
            "with the model's category set, or train with the category set the labels were made for."
        )
    prompt_keys = [conversation_key(prompt) for prompt in labels["prompt"]]
    result: dict[tuple[str, str], dict[str, Any]] = {}
    for category in categories_to_train:
        for capability in model_categories[category]:
            indices = rows_by_expert.get((category, capability), [])
            validation = [i for i in indices if prompt_keys[i] in validation_conversations]
            train = [i for i in indices if prompt_keys[i] not in validation_conversations]
            if not validation and train:
                groups = _ordered({prompt_keys[i] for i in train}, 0)
                held_out = set(groups[: max(1, len(groups) // 10)]) if len(groups) >= 3 else set()
                validation = [i for i in train if prompt_keys[i] in held_out]
                train = [i for i in train if prompt_keys[i] not in held_out]
            entry: dict[str, Any] = {"num_train": len(train), "num_validation": len(validation)}
            if len(train) < min_labels:
                entry["skip"] = (
                    f"{len(train)} training labels < min_capability_labels={min_labels}; the expert keeps its "
                    "phase-1 (task adapter) initialisation. Fix: label more pairs for this capability, or lower "
                    "min_capability_labels."
                )
                report.counts["capabilities_skipped_too_few_labels"] += 1
                report.warn(f"capability {category}/{capability}: {entry['skip']}")
            else:
                entry["train"] = labels.select(train)
                entry["validation"] = labels.select(validation)
            result[(category, capability)] = entry
    return result
