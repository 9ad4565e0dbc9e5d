"""Synthetic world benchmark: generation speed, measured "human" flip rate, and capability labeling through the real
labeler (``openai`` client over HTTP) against the synthetic capability judge, in both modes.

The judge runs in a separate process (``python -m dmoerm_trl.synthetic.judge``), like a real endpoint; the client is
:func:`dmoerm_trl.labeling.run_labeling` with a fresh cache. For each mode the table gives the wall time, the
swap-filter consistency rate next to the one the flip rate and the tied capabilities predict
(``(1 - t) ((1 - p)^2 + p^2) + t 2p(1 - p)``), and how often a kept label is right about the capability (ties
excluded) and agrees with the gold preference of the pair.

Run:
    python benchmarks/synthetic_world.py                        # 300 pairs (75 per category), ~1-2 minutes
    python benchmarks/synthetic_world.py --pairs-per-category 250 --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_judge(flip_rate: float, seed: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dmoerm_trl.synthetic.judge",
            "--port",
            "0",
            "--flip-rate",
            str(flip_rate),
            "--seed",
            str(seed),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"the judge did not start: {line!r}")
    return process, line.split()[1]


def label_quality(labels: list[dict], world, gold_better: dict) -> dict:
    right = wrong = tie = agrees_gold = 0
    for label in labels:
        chosen, rejected = label["chosen"][-1]["content"], label["rejected"][-1]["content"]
        a = world.capability_scores(label["prompt"], chosen)[label["capability"]]
        b = world.capability_scores(label["prompt"], rejected)[label["capability"]]
        right, wrong, tie = right + (a > b), wrong + (a < b), tie + (a == b)
        agrees_gold += gold_better[label["pair_id"]] == chosen
    decided = right + wrong
    return {
        "labels": len(labels),
        "right_about_capability": right / decided if decided else None,
        "from_ties": tie,
        "agrees_with_gold": agrees_gold / len(labels) if labels else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs-per-category", type=int, default=75)
    parser.add_argument("--flip-rate", type=float, default=0.1, help="The judge's flip rate.")
    parser.add_argument("--human-flip-rate", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from dmoerm_trl.data import load_category_spec, load_preference_pairs
    from dmoerm_trl.labeling import LabelingConfig, run_labeling
    from dmoerm_trl.synthetic import generate_dataset, write_dataset
    from dmoerm_trl.synthetic.judge import expected_consistency

    workdir = Path(tempfile.mkdtemp(prefix="synthetic-bench-"))
    started = time.perf_counter()
    dataset = generate_dataset(
        pairs_per_category=args.pairs_per_category,
        test_pairs_per_category=0,
        human_flip_rate=args.human_flip_rate,
        seed=args.seed,
    )
    generation_seconds = time.perf_counter() - started
    paths = write_dataset(dataset, workdir / "data")
    world, spec = dataset.world, load_category_spec(paths["categories"])
    pairs = load_preference_pairs(paths["train"], categories=spec)
    gold_better = {}
    ties = judged = 0
    for row in pairs:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        better = chosen if world.gold(row["prompt"], chosen) > world.gold(row["prompt"], rejected) else rejected
        gold_better[row["pair_id"]] = better
        first, second = (
            world.capability_scores(row["prompt"], chosen),
            world.capability_scores(row["prompt"], rejected),
        )
        for capability in spec.categories[row["category"]]:
            judged += 1
            ties += first[capability] == second[capability]
    print(
        f"generated {len(dataset.train)} pairs in {generation_seconds:.2f} s "
        f"({len(dataset.train) / generation_seconds:.0f} pairs/s); human flip rate measured "
        f"{dataset.summary['human_flip_rate_measured']:.3f} (configured {args.human_flip_rate}); "
        f"tied (pair, capability): {ties}/{judged} = {ties / judged:.3f}\n"
    )

    process, base_url = start_judge(args.flip_rate, args.seed)
    rows = []
    try:
        for mode in ("per_capability", "joint"):
            config = LabelingConfig(
                data=paths["train"],
                categories=paths["categories"],
                output=str(workdir / mode),
                model="synthetic-judge",
                base_url=base_url,
                mode=mode,
                progress=False,
                concurrency=args.concurrency,
                timeout=60,
            )
            started = time.perf_counter()
            result = run_labeling(config)
            seconds = time.perf_counter() - started
            tallies = [t for caps in result.summary["per_capability"].values() for t in caps.values()]
            labeled = sum(t["labeled"] for t in tallies)
            quality = label_quality(result.labels, world, gold_better)
            rows.append(
                {
                    "mode": mode,
                    "requests": result.summary["requests"],
                    "seconds": seconds,
                    "requests_per_s": result.summary["requests"] / seconds,
                    "consistency": labeled / judged,
                    "expected_consistency": expected_consistency(args.flip_rate, ties / judged),
                    **quality,
                }
            )
    finally:
        process.terminate()
        process.communicate(timeout=30)

    print(
        "| mode | requests | seconds | requests/s | labels | consistency (measured) | consistency (predicted) "
        "| labels right about the capability | labels from ties | labels agreeing with gold |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['requests']} | {row['seconds']:.1f} | {row['requests_per_s']:.0f} | "
            f"{row['labels']} | {row['consistency']:.3f} | {row['expected_consistency']:.3f} | "
            f"{row['right_about_capability']:.3f} | {row['from_ties']} | {row['agrees_with_gold']:.3f} |"
        )
    print(json.dumps({"workdir": str(workdir)}))


if __name__ == "__main__":
    main()
