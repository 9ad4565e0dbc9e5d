"""Fidelity benchmark: the paper's two claims against a KNOWN ground truth (the synthetic world, docs/fidelity.md).

1. Generate the world (``dmoerm_trl.synthetic``): "human" ranks = gold flipped at ``--human-flip`` (0.3), a clean
   gold-ranked test split on held-out prompts.
2. Label capabilities through the real labeler + ``openai`` client against the synthetic capability judge served on
   127.0.0.1 (verdicts flipped at ``--judge-flip``, 0.1).
3. Train on one backbone: (a) one single RM on all data (TRL ``RewardTrainer``, the pipeline's baseline), (b) one
   single RM per category (routed by the TRUE category at test time), (c) DMoERM (router + 3 phases, the package
   pipeline), (d) mean / WCO / UWO ensembles (``RewardEnsemble``) of ``--seeds`` single RMs trained with different
   seeds (seed 0 is (a)).
4. Pairwise accuracy against the GOLD preferences of the clean test split, per category and overall (with standard
   errors), DMoERM with the TRUE category given (router bypassed: routing vs expert quality), the router accuracy,
   and DMoERM against every other method on the same pairs (exact McNemar test, paired-bootstrap 95% interval).
   Every model scores the test texts once; ensembles combine their members' cached scores.
5. Best-of-n with a policy (SmolLM2-135M-Instruct; ``--fast``: a tiny random Llama), gold reward vs sqrt(KL) with
   each method as the proxy, fitted with Gao et al.'s best-of-n form ``d (a - b d)``.

Writes ``fidelity.json``, ``fidelity.md``, ``accuracy.png``, ``overoptimization.png``, ``best_of_n.csv``,
``per_pair_correct.json`` into
``--output`` and prints the markdown table.

This file holds the flags, their defaults and ``main``; the steps live beside it: ``fidelity_backbones.py`` (reward
backbone and policy), ``fidelity_world.py`` (1-2: data, labels), ``fidelity_train.py`` (3: training),
``fidelity_score.py`` (4: the methods as rewards, gold and router accuracy), ``fidelity_bon.py`` (5: best-of-n) and
``fidelity_report.py`` (statistics, the markdown table, the plot).

Example:
    python benchmarks/fidelity.py --fast --output outputs/fidelity-fast          # tiny models, < 2 minutes
    python benchmarks/fidelity.py --output outputs/fidelity --threads 2          # ~1 h on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the fidelity_*.py modules beside it
from fidelity_backbones import prepare_backbone
from fidelity_bon import best_of_n, bon_prompts, policy_samples
from fidelity_report import markdown, plot_accuracy, seed_summary, significance
from fidelity_score import build_proxies, gold_accuracy, router_accuracy
from fidelity_train import train_dmoerm, train_seed, train_single_rms
from fidelity_world import label, make_data

METHODS = [
    "single RM (all data)",
    "single RM per category",
    "DMoERM",
    "DMoERM (true category)",
    "ensemble mean",
    "ensemble WCO",
    "ensemble UWO",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="outputs/fidelity", help="Output folder (data, labels, runs, report).")
    p.add_argument("--fast", action="store_true", help="Tiny random models and little data (CI, < 2 minutes).")
    p.add_argument(
        "--backbone",
        default=None,
        help="Reward backbone: 'smollm2' (default: SmolLM2-135M-Instruct's first --smollm2-layers layers, "
        "as the demo), 'minilm' (the PyPI-shipped all-MiniLM-L6-v2), or a local model folder.",
    )
    p.add_argument("--smollm2-layers", type=int, default=2, help="Layers of SmolLM2 kept for --backbone smollm2.")
    p.add_argument("--policy", default=None, help="Best-of-n policy folder (default: SmolLM2-135M-Instruct).")
    p.add_argument("--categories", default=None, help="Comma list (default: objective_qa,chitchat,text_creation).")
    p.add_argument("--max-capabilities", type=int, default=None, help="Capability experts per category (default 2).")
    p.add_argument("--pairs-per-category", type=int, default=None, help="Training pairs per category (default 120).")
    p.add_argument(
        "--test-pairs-per-category", type=int, default=None, help="Clean gold test pairs per category (default 170)."
    )
    p.add_argument("--human-flip", type=float, default=0.3, help="Rate at which human ranks contradict the gold.")
    p.add_argument("--judge-flip", type=float, default=0.1, help="Rate at which judge verdicts are flipped.")
    p.add_argument("--epochs", type=float, default=None, help="Epochs of every stage and RM (default 2).")
    p.add_argument(
        "--learning-rate", type=float, default=None, help="LoRA learning rate of every stage and RM (5e-3)."
    )
    p.add_argument(
        "--router-mode",
        default=None,
        choices=["linear", "lora", "trunk"],
        help="DMoERM router: 'lora' (default; an adapter + head), 'linear' (a head on the frozen backbone) "
        "or 'trunk' (a head on the shared trunk's output; needs --trunk-layers).",
    )
    p.add_argument(
        "--router-pooling",
        default=None,
        choices=["last", "first", "mean"],
        help="Router pooling over the prompt tokens (default 'mean': on the 2-layer SmolLM2 the last token, "
        "the assistant opener's newline, gave routers of 80-100%% on test prompts across seeds, mean "
        "96-100%%, docs/benchmarks.md).",
    )
    p.add_argument(
        "--router-epochs",
        type=float,
        default=None,
        help="Epochs of the router stage (default 2: ~50 steps on the ~200 distinct training prompts; the "
        "former 0.5 gave 13 steps once the router trained on prompts only, and left it near chance).",
    )
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default 8).")
    p.add_argument(
        "--trunk-layers",
        type=int,
        default=0,
        help="DMoERM's shared trunk: adapters only above the bottom N layers (default 0: every layer).",
    )
    p.add_argument(
        "--lora-target-modules",
        default=None,
        help="Comma list of module names LoRA adapts (default: the model's auto choice, q/v projections).",
    )
    p.add_argument("--router-learning-rate", type=float, default=None, help="Router stage rate (default 3e-3).")
    p.add_argument(
        "--aggregator-learning-rate",
        type=float,
        default=1e-4,
        help="Phase-3 rate (default 1e-4, the package default: on standardised expert features the former "
        "2 x --learning-rate overfit, docs/benchmarks.md).",
    )
    p.add_argument("--max-length", type=int, default=None, help="Tokens per sequence (default 192).")
    p.add_argument("--seeds", type=int, default=None, help="Single RMs in the ensembles (default 3).")
    p.add_argument("--bon-prompts", type=int, default=None, help="Held-out prompts for best-of-n (default 12).")
    p.add_argument("--bon-samples", type=int, default=None, help="Samples per prompt N (default 16).")
    p.add_argument("--bon-max-new-tokens", type=int, default=None, help="Tokens per sample (default 40).")
    p.add_argument("--skip-bon", action="store_true", help="Skip best-of-n.")
    p.add_argument(
        "--dmoerm-seeds",
        type=int,
        default=1,
        help="Training runs of DMoERM (with its single-RM baseline on the same splits) with seeds --seed, "
        "--seed+1, ...: seed i > 0 goes to OUTPUT/run_seed<i> (its own data splits and initialisation), "
        "adding rows 'DMoERM (seed i)' and 'single RM (seed i)', so that seed noise shows.",
    )
    p.add_argument(
        "--train-seed-only",
        type=int,
        default=None,
        help="Only train seed i's DMoERM + single RM into OUTPUT/run_seed<i>, then stop (run it beside "
        "the main run, after the main run's labels exist; the main run waits for it).",
    )
    p.add_argument(
        "--ensemble-of-seed-runs",
        action="store_true",
        help="Ensemble members = the single RMs of the --dmoerm-seeds runs (run/baseline, "
        "run_seed1/baseline, ...) instead of extra single RMs on seed 0's splits (saves their training).",
    )
    p.add_argument(
        "--skip-per-category-rms",
        action="store_true",
        help="Do not train one single RM per category (drops the row 'single RM per category').",
    )
    p.add_argument(
        "--eval-pairs-per-category",
        type=int,
        default=None,
        help="Score only the first K clean test pairs of each category (default: all).",
    )
    p.add_argument(
        "--train-only",
        action="store_true",
        help="Stop after training (a rerun of the command without it reuses every trained model).",
    )
    p.add_argument(
        "--raw-ensembles",
        action="store_true",
        help="Also report the ensembles over raw (unstandardised) members, as before standardisation.",
    )
    p.add_argument(
        "--wait-for-samples",
        action="store_true",
        help="Best-of-n: wait for OUTPUT/bon_samples.json (being drawn by a --sample-only run) instead of sampling.",
    )
    p.add_argument(
        "--sample-only",
        action="store_true",
        help="Only generate the data and the policy's best-of-n samples (bon_samples.json), then stop: a "
        "later run on the same --output reuses them.",
    )
    p.add_argument(
        "--cross-check",
        action="store_true",
        help="Also score DMoERM through dmoerm_trl.evaluation (slower; always on with --fast).",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads.")
    p.add_argument("--seed", type=int, default=0, help="Seed of data, judge, training (+i for ensemble members).")
    return p


FULL_DEFAULTS = {
    "backbone": "smollm2",
    "categories": "objective_qa,chitchat,text_creation",
    "max_capabilities": 2,
    "pairs_per_category": 120,
    "test_pairs_per_category": 170,
    "epochs": 2.0,
    "learning_rate": 5e-3,
    "lora_r": 8,
    "lora_target_modules": None,
    "max_length": 192,
    "seeds": 3,
    "router_mode": "lora",
    "router_epochs": 2.0,
    "router_pooling": "mean",
    "router_learning_rate": 3e-3,
    "bon_prompts": 12,
    "bon_samples": 16,
    "bon_max_new_tokens": 40,
}
FAST_DEFAULTS = {
    "categories": "objective_qa,chitchat",
    "max_capabilities": 2,
    "pairs_per_category": 24,
    "test_pairs_per_category": 12,
    "epochs": 1.0,
    "learning_rate": 3e-3,
    "lora_r": 4,
    "max_length": 256,
    "seeds": 2,
    "router_mode": "linear",
    "router_epochs": 1.0,
    "bon_prompts": 4,
    "bon_samples": 4,
    "bon_max_new_tokens": 12,
}


def _fill_defaults(args) -> None:
    for key, value in (FAST_DEFAULTS if args.fast else FULL_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.categories = [c.strip() for c in args.categories.split(",") if c.strip()]


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    _fill_defaults(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from dmoerm_trl.utils.io import atomic_write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times, start = {}, time.perf_counter()

    def tick(step):
        times[step] = round(time.perf_counter() - start - sum(times.values()), 1)
        print(f"== {step} done ({times[step]} s; total {time.perf_counter() - start:.0f} s)", flush=True)

    backbone, policy = prepare_backbone(args, out)
    data, agreement = make_data(args, out)
    world, categories, paths, categories_yaml = data.world, data.categories, data.paths, data.categories_yaml
    n_train, n_test = len(data.dataset.train), len(data.dataset.test)
    tick("data")
    if args.sample_only:
        from dmoerm_trl.synthetic import GoldReward

        policy_samples(
            args, policy, bon_prompts(args, paths["heldout_prompts"]), out, GoldReward(world, on_unknown="nan")
        )
        tick("policy samples")
        return {"seconds": times}
    labels = label(args, data, out)
    tick("labels")
    if args.train_seed_only is not None:
        stages = train_seed(args, backbone, paths, labels["path"], categories_yaml, out, args.train_seed_only, False)
        tick(f"train seed {args.train_seed_only}")
        return {"seconds": times, "stages": stages}
    run_dir = out / "run"
    stages = train_dmoerm(args, backbone, paths, labels["path"], categories_yaml, run_dir)
    tick("train DMoERM + single RM")
    singles = train_single_rms(args, backbone, paths, run_dir)
    tick("train per-category RMs + seeds")
    seed_stages = {
        i: train_seed(args, backbone, paths, labels["path"], categories_yaml, out, i, True)
        for i in range(1, args.dmoerm_seeds)
    }
    if seed_stages:
        tick("train DMoERM + single RM, other seeds")
    if args.train_only:
        return {"seconds": times}
    proxies = build_proxies(args, run_dir, world, paths)
    results = {
        "command": "python benchmarks/fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items()},
        "backbone": backbone,
        "policy": policy,
        "categories": list(categories),
        "capabilities": categories,
        "data": {"train_pairs": n_train, "test_pairs": n_test, "human_gold_agreement": round(agreement, 4)},
        "labels": labels,
        "training": {
            "dmoerm_pipeline": stages,
            "single_rms": singles,
            "other_seeds": {str(i): v for i, v in seed_stages.items()},
        },
        "ensemble_reference_texts": proxies["ensemble mean"][0].config.num_reference_texts,
    }
    results["accuracy"], per_pair = gold_accuracy(
        proxies, paths["test"], categories_yaml, args.max_length, args.eval_pairs_per_category
    )
    results["significance"] = significance(per_pair)
    atomic_write_text(out / "per_pair_correct.json", json.dumps(per_pair))
    results["router"] = router_accuracy(
        run_dir, paths["test"], categories_yaml, proxies, args.max_length, cross_check=args.fast or args.cross_check
    )
    # Every training seed's router, per category (seed 0 is "router" above).
    results["router_per_seed"] = {
        "DMoERM": results["router"],
        **{
            f"DMoERM (seed {i})": router_accuracy(
                run_dir,
                paths["test"],
                categories_yaml,
                proxies,
                args.max_length,
                cross_check=False,
                name=f"DMoERM (seed {i})",
            )
            for i in range(1, args.dmoerm_seeds)
        },
    }
    tick("evaluation")
    atomic_write_text(out / "fidelity.json", json.dumps(results, indent=2, default=str))  # partial: before best-of-n
    if not args.skip_bon:
        results["best_of_n"] = best_of_n(args, policy, proxies, world, paths["heldout_prompts"], out)
        tick("best-of-n")
    if args.dmoerm_seeds > 1:
        results["seeds"] = seed_summary(results)
    results["seconds"] = times
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    results["load_average"] = list(os.getloadavg())
    table = markdown(results)
    atomic_write_text(out / "fidelity.json", json.dumps(results, indent=2, default=str))
    atomic_write_text(out / "fidelity.md", table + "\n")
    plot_accuracy(results, out / "accuracy.png")
    print("\n" + table)
    print(
        f"\nwall time {results['wall_seconds']} s; results in {out}/fidelity.json, fidelity.md, accuracy.png"
        + ("" if args.skip_bon else ", overoptimization.png")
    )
    return results


if __name__ == "__main__":
    main()
