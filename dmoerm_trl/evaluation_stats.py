"""Accuracy arithmetic for ``dmoerm eval``: Wilson intervals, breakdowns into rows, RewardBench sections.

* Every accuracy carries a 95% Wilson score interval (``ci95``): it stays inside [0, 1] and is not degenerate at 0%
  or 100%, which matters for the small subsets and categories of a reward-model evaluation.
* RewardBench (allenai/reward-bench) reports accuracy per subset, then per section (Chat, Chat Hard, Safety,
  Reasoning) as a weighted mean of its subsets' accuracies, the weights being its fixed ``EXAMPLE_COUNTS``
  (math-prm counts 984 instead of its 447 pairs, so it weighs as much as the six HumanEvalPack subsets together);
  the leaderboard's score is the plain mean of the four sections. :func:`rewardbench_sections` does that arithmetic.
  The interval of such a weighted mean is a Wilson interval at the Kish effective sample size (see
  :func:`weighted_accuracy`), which is the plain Wilson interval when the weights are the pair counts.

Example:
    >>> from dmoerm_trl.evaluation_stats import rewardbench_sections, wilson_interval
    >>> [round(x, 3) for x in wilson_interval(8, 10)]
    [0.49, 0.943]
    >>> sections = rewardbench_sections({"math-prm": {"correct": 1, "total": 2}, "hep-go": {"correct": 2, "total": 2}})
    >>> round(sections["Reasoning"]["accuracy"], 4)  # (984 * 0.5 + 164 * 1.0) / (984 + 164)
    0.5714
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
INTERVAL_METHOD = "95% Wilson score interval (weighted means: at the Kish effective sample size)"
# Row names of pairs outside the model's categories, and of pairs whose two responses the router sent apart.
NO_CATEGORY = "(no category)"
OTHER_CATEGORIES = "(categories the model lacks)"
SPLIT_ROUTING = "(chosen and rejected routed apart)"

# RewardBench's constants, copied from allenai/reward-bench `rewardbench/constants.py` (commit a32e272b3e01), used by
# `rewardbench.utils.calculate_scores_per_section(EXAMPLE_COUNTS, SUBSET_MAPPING, metrics)`. EXAMPLE_COUNTS are
# weights, not the counts of the data: math-prm is "actual length 447, upweighting to be equal to code" (6 x 164), and
# the file gives xstest-should-refuse 250 / xstest-should-respond 154 (some downstream copies swap these two; we keep
# allenai's values, as the leaderboard does).
REWARDBENCH_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 250,
    "xstest-should-respond": 154,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}
REWARDBENCH_SUBSET_MAPPING = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
SECTIONS = tuple(REWARDBENCH_SUBSET_MAPPING)


def wilson_interval(correct: float, total: float, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of ``correct / total`` (``None`` when ``total`` is 0). ``total`` may be fractional
    (an effective sample size).

    Example:
        >>> [round(x, 3) for x in wilson_interval(10, 10)]  # 100% of 10: the interval still has width
        [0.722, 1.0]
    """
    if total <= 0:
        return None
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # The interval always contains p: rounding can put centre - half a few ulps above 0 when p is 0 (or below 1).
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def accuracy_entry(correct: int, total: int, reward_ties: int | None = None) -> dict[str, Any]:
    """``{"accuracy", "correct", "total", "ci95"[, "reward_ties"]}`` for one row of a table.

    Example:
        >>> accuracy_entry(3, 4)["accuracy"], [round(x, 3) for x in accuracy_entry(3, 4)["ci95"]]
        (0.75, [0.301, 0.954])
    """
    interval = wilson_interval(correct, total)
    entry = {
        "accuracy": correct / total if total else None,
        "correct": correct,
        "total": total,
        "ci95": list(interval) if interval else None,
    }
    if reward_ties is not None:
        entry["reward_ties"] = reward_ties
    return entry


def breakdown(correct: Sequence[bool], groups: Sequence[str], ties: Sequence[bool] | None = None) -> dict[str, dict]:
    """Accuracy entries per group, in sorted group order (every pair lands in exactly one row).

    Example:
        >>> {k: v["correct"] for k, v in breakdown([True, False, True], ["b", "a", "b"]).items()}
        {'a': 0, 'b': 2}
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for index, (is_correct, group) in enumerate(zip(correct, groups, strict=True)):
        counts[group][0] += bool(is_correct)
        counts[group][1] += 1
        counts[group][2] += bool(ties[index]) if ties is not None else 0
    with_ties = ties is not None
    return {group: accuracy_entry(k, n, t if with_ties else None) for group, (k, n, t) in sorted(counts.items())}


def weighted_accuracy(entries: Mapping[str, Mapping[str, Any]], weights: Mapping[str, float]) -> dict[str, Any]:
    """Weighted mean of row accuracies (``sum w_s acc_s / sum w_s``) with its interval.

    The interval is Wilson's at the Kish effective sample size ``n_eff = 1 / sum_s (v_s^2 / n_s)`` with the normalised
    weights ``v_s = w_s / sum w``: the variance of the weighted mean of independent proportions with a common rate
    ``p`` is ``p (1 - p) / n_eff``. With weights equal to the counts, ``n_eff`` is the number of pairs and the interval
    is the pooled Wilson interval.

    Example:
        >>> entry = weighted_accuracy({"a": {"correct": 1, "total": 2}, "b": {"correct": 4, "total": 4}},
        ...                           {"a": 2, "b": 4})  # weights = counts: the pooled 5 / 6
        >>> round(entry["accuracy"], 4), round(entry["effective_pairs"], 6)
        (0.8333, 6.0)
    """
    rows = {name: entry for name, entry in entries.items() if entry.get("total") and weights.get(name)}
    if not rows:
        return {"accuracy": None, "ci95": None, "total": 0, "effective_pairs": 0.0, "weights": {}}
    weight_sum = sum(weights[name] for name in rows)
    accuracy = sum(weights[name] * rows[name]["correct"] / rows[name]["total"] for name in rows) / weight_sum
    n_eff = 1.0 / sum((weights[name] / weight_sum) ** 2 / rows[name]["total"] for name in rows)
    interval = wilson_interval(accuracy * n_eff, n_eff)
    return {
        "accuracy": accuracy,
        "ci95": list(interval),
        "total": sum(rows[name]["total"] for name in rows),
        "effective_pairs": n_eff,
        "weights": {name: weights[name] for name in rows},
    }


def rewardbench_sections(per_subset: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """RewardBench's section scores from per-subset results (``{subset: {"correct", "total"}}``).

    As ``rewardbench.utils.calculate_scores_per_section(EXAMPLE_COUNTS, SUBSET_MAPPING, metrics)``: a section is the
    mean of the accuracies of its subsets that are present, weighted by :data:`REWARDBENCH_EXAMPLE_COUNTS`; sections
    without any subset in the data are absent. ``"Score"`` is the leaderboard's unweighted mean of the four sections,
    only when all four are present. Subsets outside the mapping are listed under ``"unmapped_subsets"``.

    Example:
        >>> sections = rewardbench_sections({"alpacaeval-easy": {"correct": 1, "total": 1},
        ...                                  "mt-bench-med": {"correct": 0, "total": 2}})
        >>> round(sections["Chat"]["accuracy"], 4), sections["Chat"]["total"], "Score" in sections  # 100 / (100 + 40)
        (0.7143, 3, False)
    """
    result: dict[str, Any] = {}
    present = {name for name, entry in per_subset.items() if entry.get("total")}
    for section, subsets in REWARDBENCH_SUBSET_MAPPING.items():
        rows = {s: per_subset[s] for s in subsets if s in present}
        if rows:
            result[section] = weighted_accuracy(rows, REWARDBENCH_EXAMPLE_COUNTS)
            result[section]["missing_subsets"] = [s for s in subsets if s not in present]
    if all(section in result for section in SECTIONS):
        # The mean of sections is again a weighted mean of subsets: subset s of section S weighs w_s / (4 W_S).
        weights = {
            s: REWARDBENCH_EXAMPLE_COUNTS[s] / (len(SECTIONS) * sum(result[S]["weights"].values()))
            for S in SECTIONS
            for s in result[S]["weights"]
        }
        score = weighted_accuracy({s: per_subset[s] for s in weights}, weights)
        result["Score"] = {key: score[key] for key in ("accuracy", "ci95", "total", "effective_pairs")}
    mapped = {s for subsets in REWARDBENCH_SUBSET_MAPPING.values() for s in subsets}
    unmapped = sorted(present - mapped)
    if unmapped and result:
        result["unmapped_subsets"] = unmapped
    return result


def add_intervals(node: Any) -> None:
    """Give every accuracy entry (a dict with ``accuracy`` and ``total``) in a nested report a ``ci95`` (in place).
    ``correct`` is taken from the entry, else recovered as ``round(accuracy * total)``.

    Example:
        >>> router = {"prompt": {"accuracy": 0.5, "total": 4}}
        >>> add_intervals(router); [round(x, 3) for x in router["prompt"]["ci95"]]
        [0.15, 0.85]
    """
    if isinstance(node, dict):
        accuracy, total = node.get("accuracy"), node.get("total")
        if isinstance(accuracy, float | int) and isinstance(total, int) and total > 0 and "ci95" not in node:
            correct = node.get("correct", round(accuracy * total))
            node["ci95"] = list(wilson_interval(correct, total))
        for value in node.values():
            add_intervals(value)
    elif isinstance(node, list):
        for value in node:
            add_intervals(value)


def category_rows(labels: Sequence[str], model_categories: Sequence[str] | None) -> tuple[list[str], Counter]:
    """Each pair's row in the per-category table: its category when the model has it (or when the model has no
    categories), else :data:`OTHER_CATEGORIES`; no label: :data:`NO_CATEGORY`. Also returns the counts of the
    labels that went to :data:`OTHER_CATEGORIES`.

    Example:
        >>> category_rows(["qa", "poetry", ""], ["qa", "chat"])
        (['qa', '(categories the model lacks)', '(no category)'], Counter({'poetry': 1}))
    """
    rows, lacking = [], Counter()
    for label in labels:
        if not label:
            rows.append(NO_CATEGORY)
        elif model_categories is None or label in model_categories:
            rows.append(label)
        else:
            rows.append(OTHER_CATEGORIES)
            lacking[label] += 1
    return rows, lacking


def summarize_pairs(
    chosen_rewards: Sequence[float],
    rejected_rewards: Sequence[float],
    categories: Sequence[str],
    subsets: Sequence[str] | None = None,
    routed: Sequence[str] | None = None,
    model_categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One model's pairwise accuracy on a set of pairs, broken down every way ``dmoerm eval`` reports.

    ``overall`` (every pair; a reward tie counts as wrong), ``per_category`` (labelled categories the model has, or all
    labelled categories when ``model_categories`` is ``None``), ``other_categories`` (labelled with a category the
    model lacks: routed like any pair; the labels and their counts under ``"categories"``) and ``no_category`` (no
    label), so that the rows add up to the overall; ``overall_model_categories`` (the ``per_category`` rows together)
    when there are such rows and either extra row exists;
    ``per_subset`` and RewardBench ``sections`` when pairs have a ``subset``; ``per_routed_category`` when ``routed``
    (one routed category per pair) is given.

    Example:
        >>> result = summarize_pairs([2.0, 0.0, 1.0], [1.0, 1.0, 0.0], ["qa", "poetry", ""], model_categories=["qa"])
        >>> result["per_category"]["qa"]["correct"], result["other_categories"]["categories"]
        (1, {'poetry': 1})
        >>> result["overall"]["total"], result["no_category"]["total"]
        (3, 1)
    """
    chosen = [float(x) for x in chosen_rewards]
    rejected = [float(x) for x in rejected_rewards]
    if not len(chosen) == len(rejected) == len(categories):
        raise ValueError(
            f"{len(chosen)} chosen rewards, {len(rejected)} rejected rewards, {len(categories)} categories"
        )
    correct = [c > r for c, r in zip(chosen, rejected)]
    ties = [c == r for c, r in zip(chosen, rejected)]
    result: dict[str, Any] = {"overall": accuracy_entry(sum(correct), len(correct), sum(ties))}
    rows, lacking = category_rows(categories, model_categories)
    by_row = breakdown(correct, rows, ties)
    result["per_category"] = {k: v for k, v in by_row.items() if k not in (OTHER_CATEGORIES, NO_CATEGORY)}
    if OTHER_CATEGORIES in by_row:
        result["other_categories"] = {**by_row[OTHER_CATEGORIES], "categories": dict(sorted(lacking.items()))}
    if NO_CATEGORY in by_row:
        result["no_category"] = by_row[NO_CATEGORY]
    if result["per_category"] and (OTHER_CATEGORIES in by_row or NO_CATEGORY in by_row):
        entries = result["per_category"].values()
        result["overall_model_categories"] = accuracy_entry(
            sum(e["correct"] for e in entries),
            sum(e["total"] for e in entries),
            sum(e["reward_ties"] for e in entries),
        )
    if subsets is not None and any(subsets):
        result["per_subset"] = breakdown(correct, [s or "(no subset)" for s in subsets], ties)
        sections = rewardbench_sections(result["per_subset"])
        if sections:
            result["sections"] = sections
    if routed is not None:
        result["per_routed_category"] = breakdown(correct, list(routed), ties)
    return result


def paired_comparison(first: Sequence[bool], second: Sequence[bool], z: float = Z_95) -> dict[str, Any]:
    """Two models on the same pairs: accuracy difference ``first - second``, its 95% interval and McNemar's exact
    two-sided p-value.

    The interval is Agresti and Min's (2005, Statistics in Medicine 24:729) for matched proportions: add 1/2 to each
    cell of the 2x2 table, then a Wald interval, which keeps its coverage with few discordant pairs. Only the pairs
    where exactly one model is right carry information (``only_first_right``, ``only_second_right``).

    Example:
        >>> result = paired_comparison([1] * 8 + [0] * 2 + [1] * 5, [0] * 8 + [1] * 2 + [1] * 5)
        >>> result["difference"], result["only_first_right"], result["only_second_right"], result["mcnemar_p"]
        (0.4, 8, 2, 0.109375)
    """
    if len(first) != len(second):
        raise ValueError(f"{len(first)} results against {len(second)}: compare the same pairs")
    n = len(first)
    only_first = sum(1 for a, b in zip(first, second) if a and not b)
    only_second = sum(1 for a, b in zip(first, second) if b and not a)
    discordant, smaller = only_first + only_second, min(only_first, only_second)
    p_value = min(1.0, 2 * sum(math.comb(discordant, i) for i in range(smaller + 1)) / 2**discordant)
    if not n:
        return {
            "pairs": 0,
            "difference": None,
            "ci95": None,
            "only_first_right": 0,
            "only_second_right": 0,
            "mcnemar_p": 1.0,
        }
    a, b, total = only_first + 0.5, only_second + 0.5, n + 2
    centre = (a - b) / total
    half = z * math.sqrt(max(0.0, (a + b) - (a - b) ** 2 / total)) / total
    return {
        "pairs": n,
        "difference": (only_first - only_second) / n,
        "ci95": [max(-1.0, centre - half), min(1.0, centre + half)],
        "only_first_right": only_first,
        "only_second_right": only_second,
        "mcnemar_p": p_value,
    }
