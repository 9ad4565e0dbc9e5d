"""Do the capability experts learn their capability? A check only a world with a known truth allows.

For each category and capability expert of finished ``benchmarks/demo_sizes.py`` runs (``data/test.jsonl`` with the
truth's per-capability scores, ``eval_gold/eval_examples.jsonl`` with each expert's rewards, ``labels/`` with the
judge's capability labels), counts on the pairs where the truth separates the two responses:

* ``labels~true``: the judge's capability labels that agree with the true capability scores (are the labels right?);
* ``true~gold``: clean test pairs where the true capability orders the responses as the gold does (does the
  capability decide the category's preference?);
* ``expert~true``: test pairs where the expert's reward orders them as the true capability does (did it learn?).

Pairs the router sent to another category are left out (their expert rewards are another category's). Each share
carries its 95% Wilson interval. Results: docs/demo.md ("Sizes").

    $ python benchmarks/expert_truth.py /tmp/demo_sizes/p96e3l2s0 /tmp/p3/p256e3l2s0
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _count(counter: list[int], truth_a: float, truth_b: float, agrees_a_over_b: bool | None) -> None:
    """counter = [pairs, ties, agreeing]; ``agrees_a_over_b``: does the other order say a > b (None: a tie there)."""
    counter[0] += 1
    if truth_a == truth_b:
        counter[1] += 1
    elif agrees_a_over_b is not None and agrees_a_over_b == (truth_a > truth_b):
        counter[2] += 1


def expert_truth(run: str | Path) -> dict[tuple[str, str], dict[str, list[int]]]:
    """``{(category, capability): {"labels~true", "true~gold", "expert~true": [pairs, ties, agreeing]}}`` of a run.

    Example:
        >>> rows = expert_truth("/tmp/demo_sizes/p96e3l2s0")  # doctest: +SKIP
        >>> rows[("objective_qa", "correctness")]["expert~true"]  # doctest: +SKIP
        [64, 24, 20]
    """
    from dmoerm_trl.synthetic import GoldReward

    run = Path(run)
    gold = GoldReward()
    counts: dict = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for label in _jsonl(run / "labels" / "capability_pairs.jsonl"):
        capability = label["capability"]
        chosen, rejected = gold.capability_scores([label["prompt"]] * 2, [label["chosen"], label["rejected"]])
        _count(counts[(label["category"], capability)]["labels~true"], chosen[capability], rejected[capability], True)
    tests = _jsonl(run / "data" / "test.jsonl")
    examples = _jsonl(run / "eval_gold" / "eval_examples.jsonl")
    if len(tests) != len(examples) or any(t["category_key"] != e["category"] for t, e in zip(tests, examples)):
        raise ValueError(f"{run}: eval_gold/eval_examples.jsonl is not the evaluation of data/test.jsonl, in order")
    for test, example in zip(tests, examples):
        if example["routed_category"] != example["category"]:
            continue
        best, worst = test["gold_rank"].index(1), test["gold_rank"].index(2)  # the chosen/rejected of the example
        for capability, chosen_reward in example["chosen_capability_rewards"].items():
            truth_best = test["capability_scores"][best][capability]
            truth_worst = test["capability_scores"][worst][capability]
            cell = counts[(example["category"], capability)]
            _count(cell["true~gold"], truth_best, truth_worst, True)
            rejected_reward = example["rejected_capability_rewards"][capability]
            expert = None if chosen_reward == rejected_reward else chosen_reward > rejected_reward
            _count(cell["expert~true"], truth_best, truth_worst, expert)
    return {key: dict(value) for key, value in counts.items()}


def format_table(runs: dict[str, dict]) -> str:
    """A markdown table: one row per run, category and capability; agreeing / separated pairs [95% Wilson]."""
    from dmoerm_trl.evaluation_stats import wilson_interval

    def share(counter):
        if counter is None:
            return "-"
        pairs, ties, agreeing = counter
        separated = pairs - ties
        if separated == 0:
            return f"0 of {pairs} separated"
        low, high = wilson_interval(agreeing, separated)
        return f"{agreeing}/{separated} = {100 * agreeing / separated:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"

    lines = [
        "| run | category | capability | labels~true | true~gold (test) | expert~true (test) |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in runs.items():
        for (category, capability), cell in sorted(rows.items()):
            lines.append(
                f"| {name} | {category} | {capability} | {share(cell.get('labels~true'))} | "
                f"{share(cell.get('true~gold'))} | {share(cell.get('expert~true'))} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished benchmarks/demo_sizes.py output folders")
    args = parser.parse_args(argv)
    missing = [
        f"{run}/{need}"
        for run in args.runs
        for need in ("data/test.jsonl", "eval_gold/eval_examples.jsonl", "labels/capability_pairs.jsonl")
        if not (Path(run) / need).is_file()
    ]
    if missing:
        parser.error(f"not a finished benchmarks/demo_sizes.py run: missing {', '.join(missing)}")
    print(format_table({Path(run).name: expert_truth(run) for run in args.runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
