"""How the demo's reward models learn with its size: gold accuracy (95% Wilson interval) and validation loss of
DMoERM and the single RM against training pairs per category, epochs and reward-backbone depth, and the time.

Runs the demo's steps 1-4 (data, judge labels, training, evaluation; no best-of-n) for one size point.
Results: docs/demo.md ("Sizes").

    $ nice -n 10 python benchmarks/demo_sizes.py --output /tmp/demo_sizes/p48e3l2 --pairs 48 --epochs 3 \
        --layers 2 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--pairs", type=int, required=True, help="training pairs per category")
    parser.add_argument("--epochs", type=float, required=True)
    parser.add_argument("--layers", type=int, required=True, help="SmolLM2 decoder layers of the reward backbone")
    parser.add_argument("--labels", type=int, default=None, help="capability labels per expert (default: --pairs/2)")
    parser.add_argument("--test-pairs", type=int, default=64, help="clean gold test pairs per category")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from dmoerm_trl.assets import prepare_smollm2
    from dmoerm_trl.demo import FULL, _subsample_labels, prepare_reward_backbone
    from dmoerm_trl.demo.training import evaluate_both, train_models
    from dmoerm_trl.demo.world import demo_world_data, label_with_synthetic_judge
    from dmoerm_trl.evaluation_stats import wilson_interval

    torch.set_num_threads(args.threads)
    sizes = dataclasses.replace(
        FULL,
        pairs_per_category=args.pairs,
        epochs=args.epochs,
        reward_layers=args.layers,
        test_pairs_per_category=args.test_pairs,
        max_labels_per_capability=args.labels or max(24, args.pairs // 2),
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    load_start, start = os.getloadavg(), time.perf_counter()
    backbone = prepare_reward_backbone(prepare_smollm2(), sizes.reward_layers)
    data = demo_world_data(sizes, args.seed, out)
    paths, categories_yaml = data.paths, data.categories_yaml
    label_with_synthetic_judge(data, out / "labels", seed=args.seed)
    _subsample_labels(
        out / "labels" / "capability_pairs.jsonl",
        out / "labels" / "demo_labels.jsonl",
        sizes.max_labels_per_capability,
        args.seed,
    )
    train_start = time.perf_counter()
    training = train_models(
        backbone,
        paths["train"],
        out / "labels" / "demo_labels.jsonl",
        categories_yaml,
        out / "dmoerm",
        sizes,
        args.seed,
        args.threads,
    )
    train_seconds = time.perf_counter() - train_start
    evaluation = evaluate_both(out / "dmoerm", paths["train"], paths["test"], out)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    gold = evaluation["gold_test"]
    row = {
        "pairs": args.pairs,
        "epochs": args.epochs,
        "layers": args.layers,
        "seed": args.seed,
        "labels_per_expert": sizes.max_labels_per_capability,
        "test_pairs": gold["dmoerm"]["pairs"],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "train_wall_seconds": round(train_seconds, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "load_start": round(load_start[0], 2),
        "load_end": round(os.getloadavg()[0], 2),
    }
    for name in ("dmoerm", "baseline"):
        accuracy, total = gold[name]["overall"], gold[name]["pairs"]
        low, high = wilson_interval(accuracy * total, total) or (float("nan"), float("nan"))
        row[f"{name}_gold"] = round(accuracy, 4)
        row[f"{name}_gold_ci"] = [round(low, 4), round(high, 4)]
        row[f"{name}_human_val"] = evaluation["human_validation"][name]["overall"]
    row["router_accuracy_prompt"] = gold.get("router_accuracy_prompt")
    row["stage_eval_loss"] = {k: v.get("eval_loss") for k, v in training["stages"].items()}
    (out / "row.json").write_text(json.dumps(row, indent=1), encoding="utf-8")
    print("ROW " + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
