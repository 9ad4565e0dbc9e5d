"""Phase 3 on small splits: does the aggregator MLP's fixed schedule overfit, and what would do better?

Reads finished runs of ``benchmarks/demo_sizes.py`` (each has ``data/test.jsonl``, the clean gold test split, and
``dmoerm/`` with every aggregator stage's cached expert features of its phase-3 and validation pairs), computes the
frozen experts' features of the gold test pairs once per run and category, then retrains each category's aggregator
from the cached phase-3 features under several variants, each from several initialisation seeds, and scores the
category's gold test pairs (the true category: no router in the loop) and its validation pairs.

Variants: ``shipped`` (the saved aggregator), ``mlp-eN`` (the paper's MLP ``Linear(k*H, A) -> PReLU -> Linear(A, 1)``
as phase 3 trains it: standardised features, AdamW at the run's aggregator learning rate, linear decay, the run's
batch size, N epochs, last weights), ``mlp-e6-bestval`` (6 epochs, the epoch with the lowest validation loss), ``mlp-e6-bestacc`` (the first epoch with
the highest validation accuracy: the paper's selection rule),
``experts-mean`` (no trained aggregator: the mean of the experts' value-head rewards, each standardised on the
phase-3 texts) and ``linear-rewards`` (a weighted sum of those standardised expert rewards, k + 1 parameters,
trained with the same loss). Results: docs/demo.md ("Phase 3 on small splits").

    $ nice -n 10 python benchmarks/phase3_study.py /tmp/demo_sizes/p48e3l2s0 /tmp/demo_sizes/p48e3l2s1 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

VARIANTS = (
    "shipped",
    "mlp-e1",
    "mlp-e2",
    "mlp-e3",
    "mlp-e6",
    "mlp-e6-bestval",
    "mlp-e6-bestacc",
    "mlp-e12",
    "mlp-e24",
    "experts-mean",
    "linear-rewards",
)
REFERENCE = "mlp-e6"


def _layout(run: Path) -> dict | None:
    """Where a run keeps its model, gold test split and category set: a ``demo_sizes.py`` output folder
    (``dmoerm/``, ``data/test.jsonl``, ``data/demo_categories.yaml``), or a trained model folder whose
    ``run_config.json`` names its training data (``test.jsonl`` beside it) and category set (``fidelity.py`` runs)."""
    if (run / "dmoerm" / "run_config.json").is_file():
        layout = {"model": run / "dmoerm", "test": run / "data" / "test.jsonl"}
        layout["categories"] = run / "data" / "demo_categories.yaml"
    elif (run / "run_config.json").is_file():
        config = json.loads((run / "run_config.json").read_text())
        layout = {"model": run, "test": Path(config["data_args"]["dataset_path"]).parent / "test.jsonl"}
        layout["categories"] = Path(config["model_args"]["categories"])
    else:
        return None
    return layout if layout["test"].is_file() and layout["categories"].is_file() else None


def _run_settings(model_dir: Path) -> dict:
    config = json.loads((model_dir / "run_config.json").read_text())
    args = config["training_args"]
    return {
        "lr": args.get("aggregator_learning_rate") or args["learning_rate"],
        "batch_size": args["per_device_train_batch_size"],
        "max_length": args.get("max_length"),
    }


def _cached(model_dir: Path, category: str):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "stages" / f"aggregator__{category}" / "features.safetensors"))


def _test_features(model, tokenizer, layout: dict, category: str, max_length):
    from dmoerm_trl.data import load_preference_pairs
    from dmoerm_trl.data.tokenize import tokenize_pairs
    from dmoerm_trl.trainers.aggregator_trainer import compute_pair_features

    pairs = load_preference_pairs(str(layout["test"]), categories=str(layout["categories"]))
    pairs = pairs.filter(lambda row: row["category"] == category)
    pairs = tokenize_pairs(pairs, tokenizer, max_length, f"gold test pairs ({category})")
    return compute_pair_features(model, pairs, category, tokenizer.pad_token_id, desc=f"test features ({category})")


def _pair_loss(reward_fn, chosen, rejected):
    import torch

    return -torch.nn.functional.logsigmoid(reward_fn(chosen) - reward_fn(rejected)).mean()


def _train(module, params, train, lr, batch_size, epochs, seed, validation=None, reward_fn=None):
    """The phase-3 schedule: AdamW (Trainer's defaults), linear decay to 0, shuffled batches. Returns the
    validation (loss, accuracy) after each epoch, the state of the epoch with the lowest validation loss and that of
    the first epoch with the highest validation accuracy (the paper's rule)."""
    import torch

    reward_fn = reward_fn or module
    generator = torch.Generator().manual_seed(seed)
    chosen, rejected = train
    steps_per_epoch = math.ceil(len(chosen) / batch_size)
    total = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    history, best, best_acc = [], (float("inf"), None), (-1.0, None)
    for _ in range(epochs):
        order = torch.randperm(len(chosen), generator=generator)
        for start in range(0, len(chosen), batch_size):
            rows = order[start : start + batch_size]
            loss = _pair_loss(reward_fn, chosen[rows], rejected[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        if validation is not None:
            with torch.no_grad():
                val = _pair_loss(reward_fn, *validation).item()
                acc = (reward_fn(validation[0]) > reward_fn(validation[1])).float().mean().item()
            history.append((val, acc))
            if val < best[0]:
                best = (val, {k: v.clone() for k, v in module.state_dict().items()})
            if acc > best_acc[0]:
                best_acc = (acc, {k: v.clone() for k, v in module.state_dict().items()})
    return history, best[1], best_acc[1]


def _expert_rewards(model, category: str, features):
    """``(N, k)`` value-head rewards of each expert from the concatenated ``(N, k*H)`` features."""
    import torch

    experts = model.expert_adapter_names(category)
    width = features.shape[1] // len(experts)
    return torch.cat(
        [model.value_heads[name](features[:, j * width : (j + 1) * width]) for j, name in enumerate(experts)], -1
    )


def _variant_rewards(name, model, category, data, settings, seed):
    """Rewards of (test chosen, test rejected, validation chosen, validation rejected) under one variant."""
    import torch

    from dmoerm_trl.models.dmoerm.modeling_dmoerm import CapabilityAggregator

    train = (data["train_chosen"], data["train_rejected"])
    validation = (data["eval_chosen"], data["eval_rejected"]) if "eval_chosen" in data else None
    parts = [data["test_chosen"], data["test_rejected"]] + (list(validation) if validation else [])
    saved = model.aggregators[model._slug(category)]
    if name == "shipped":
        return [saved(x).squeeze(-1) for x in parts]
    if name in ("experts-mean", "linear-rewards"):
        texts = torch.cat(train)
        reference = _expert_rewards(model, category, texts)
        mean, std = reference.mean(0), reference.std(0).clamp(min=1e-6)

        def standardised(x):
            return (_expert_rewards(model, category, x) - mean) / std

        if name == "experts-mean":
            return [standardised(x).mean(-1) for x in parts]
        torch.manual_seed(seed)
        linear = torch.nn.Linear(mean.numel(), 1)
        _train(linear, linear.parameters(), (standardised(train[0]), standardised(train[1])),
               settings["lr"] * 100, settings["batch_size"], 20, seed)  # fmt: skip
        return [linear(standardised(x)).squeeze(-1) for x in parts]
    epochs = int(name.split("-e")[1].split("-")[0])
    torch.manual_seed(seed)
    hidden = saved.proj.out_features
    mlp = CapabilityAggregator(saved.num_experts, saved.proj.in_features // saved.num_experts, hidden)
    mlp.set_feature_statistics(torch.cat(train))
    _, best, best_acc = _train(
        mlp, [p for n, p in mlp.named_parameters()], train, settings["lr"], settings["batch_size"], epochs, seed,
        validation=validation,
    )  # fmt: skip
    if name.endswith("bestval") and best is not None:
        mlp.load_state_dict(best)
    if name.endswith("bestacc") and best_acc is not None:
        mlp.load_state_dict(best_acc)
    return [mlp(x).squeeze(-1) for x in parts]


def study(runs: list[Path], seeds: int, variants=VARIANTS, threads: int = 1) -> dict:
    """Per run, category and variant: per-test-pair correctness (averaged over seeds) and validation loss."""
    import torch

    from dmoerm_trl.evaluation import load_reward_model

    torch.set_num_threads(threads)
    results = {}
    for run in runs:
        layout = _layout(run)
        model, tokenizer = load_reward_model(layout["model"])
        settings = _run_settings(layout["model"])
        for category in model.config.category_names:
            data = _cached(layout["model"], category)
            data["test_chosen"], data["test_rejected"] = _test_features(
                model, tokenizer, layout, category, settings["max_length"]
            )
            for name in variants:
                correct, val_losses = torch.zeros(len(data["test_chosen"])), []
                for seed in range(1 if name in ("shipped", "experts-mean") else seeds):
                    with torch.no_grad() if name in ("shipped", "experts-mean") else torch.enable_grad():
                        rewards = _variant_rewards(name, model, category, data, settings, seed)
                    with torch.no_grad():
                        correct += (rewards[0] > rewards[1]).float()
                        if len(rewards) == 4:
                            val_losses.append(-torch.nn.functional.logsigmoid(rewards[2] - rewards[3]).mean().item())
                runs_done = 1 if name in ("shipped", "experts-mean") else seeds
                results[(run.name, category, name)] = {
                    "correct": (correct / runs_done).tolist(),
                    "val_loss": sum(val_losses) / len(val_losses) if val_losses else float("nan"),
                    "train_pairs": len(data["train_chosen"]),
                    "val_pairs": len(data.get("eval_chosen", [])),
                }
    return results


def summarise(results: dict, variants=VARIANTS) -> list[dict]:
    """Per variant: accuracy over all gold test pairs, its standard error, and the paired difference to the
    reference schedule (mlp-e6) with its standard error, both over test pairs."""
    rows = []
    for name in variants:
        acc, diff = [], []
        for (run, category, variant), cell in results.items():
            if variant != name:
                continue
            reference = results[(run, category, REFERENCE)]["correct"]
            acc += cell["correct"]
            diff += [a - b for a, b in zip(cell["correct"], reference)]
        n = len(acc)
        mean = sum(acc) / n
        se = math.sqrt(sum((a - mean) ** 2 for a in acc) / (n - 1) / n)
        dmean = sum(diff) / n
        dse = math.sqrt(sum((d - dmean) ** 2 for d in diff) / (n - 1) / n)
        per_run = {}
        for (run, _, variant), cell in results.items():
            if variant == name:
                per_run.setdefault(run, []).extend(cell["correct"])
        losses = [c["val_loss"] for (_, _, v), c in results.items() if v == name and not math.isnan(c["val_loss"])]
        rows.append(
            {
                "variant": name,
                "pairs": n,
                "accuracy": mean,
                "se": se,
                "diff_vs_e6": dmean,
                "diff_se": dse,
                "per_run": {run: sum(v) / len(v) for run, v in per_run.items()},
                "val_loss": sum(losses) / len(losses) if losses else float("nan"),
            }
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs", nargs="+", help="finished benchmarks/demo_sizes.py output folders or fidelity.py model folders"
    )
    parser.add_argument("--seeds", type=int, default=5, help="initialisation seeds per trained variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="also write the per-cell results and the summary as JSON here")
    args = parser.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    for run in runs:
        if _layout(run) is None:
            parser.error(
                f"{run}: not a finished benchmarks/demo_sizes.py run (dmoerm/, data/test.jsonl) nor a trained model "
                "folder whose run_config.json names its data (test.jsonl beside it) and category set"
            )
    results = study(runs, args.seeds, threads=args.threads)
    rows = summarise(results)
    sizes = sorted({(c["train_pairs"], c["val_pairs"]) for c in results.values()})
    print(f"runs: {', '.join(r.name for r in runs)}; phase-3/validation pairs per category: {sizes}")
    print(f"seeds per trained variant: {args.seeds}; accuracy against the gold, true category, +- one SE over pairs")
    print("| variant | gold test pairs | accuracy | paired diff vs mlp-e6 | mean val loss | per run |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        per_run = ", ".join(f"{v:.3f}" for v in row["per_run"].values())
        print(
            f"| {row['variant']} | {row['pairs']} | {row['accuracy']:.3f} +- {row['se']:.3f} | "
            f"{row['diff_vs_e6']:+.3f} +- {row['diff_se']:.3f} | {row['val_loss']:.3f} | {per_run} |"
        )
    if args.output:
        from dmoerm_trl.utils.io import atomic_write_text

        cells = {"|".join(key): value for key, value in results.items()}
        atomic_write_text(args.output, json.dumps({"summary": rows, "cells": cells}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
