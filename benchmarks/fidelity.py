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

Example:
    python benchmarks/fidelity.py --fast --output outputs/fidelity-fast          # tiny models, < 2 minutes
    python benchmarks/fidelity.py --output outputs/fidelity --threads 2          # ~1 h on 2 busy cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fidelity_report.py, fidelity_backbones.py beside it
from fidelity_backbones import prepare_backbone
from fidelity_report import markdown, paired_mean_difference, plot_accuracy, significance, stderr

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


# --------------------------------------------------------------------------------------------------------- data
def make_data(args, out: Path):
    import dataclasses

    import yaml

    from dmoerm_trl.synthetic import SyntheticWorld
    from dmoerm_trl.synthetic.generator import SyntheticDataConfig, generate_dataset, write_dataset

    world = SyntheticWorld(args.categories)
    categories = {name: caps[: args.max_capabilities] for name, caps in world.categories.items()}
    dataset = generate_dataset(
        SyntheticDataConfig(
            pairs_per_category=args.pairs_per_category,
            test_pairs_per_category=args.test_pairs_per_category,
            categories=args.categories,
            human_flip_rate=args.human_flip,
            seed=args.seed,
        )
    )
    paths = write_dataset(dataset, out / "data")
    spec = dataclasses.replace(world.category_spec(), categories=categories)
    categories_yaml = out / "data" / "fidelity_categories.yaml"
    tmp = categories_yaml.with_name(categories_yaml.name + ".tmp")
    tmp.write_text(yaml.safe_dump(spec.to_yaml_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8")
    os.replace(tmp, categories_yaml)
    agreement = sum(not r["human_flipped"] for r in dataset.train) / max(1, len(dataset.train))
    return world, categories, paths, categories_yaml, agreement, len(dataset.train), len(dataset.test)


def label(args, world, paths, categories_yaml, out: Path) -> dict:
    from dmoerm_trl.labeling import LabelingConfig, run_labeling
    from dmoerm_trl.synthetic.judge import capability_judge_server

    with capability_judge_server(world, flip_rate=args.judge_flip, seed=args.seed, port=0) as server:
        result = run_labeling(
            LabelingConfig(
                data=paths["train"],
                output=str(out / "labels"),
                model="synthetic-judge",
                base_url=server.base_url,
                mode="per_capability",
                categories=str(categories_yaml),
                concurrency=8,
            ),
            api_key="local-fidelity-judge",
        )
    return {
        "calls": result.summary.get("calls"),
        "cache_hits": result.summary.get("cache_hits"),
        "labels": len(result.labels),
        "path": str(out / "labels" / "capability_pairs.jsonl"),
    }


# ----------------------------------------------------------------------------------------------------- training
def _training_config(args, output_dir, seed: int):
    from dmoerm_trl.trainers import DMoERMTrainingConfig

    return DMoERMTrainingConfig(
        output_dir=str(output_dir),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        max_length=args.max_length,
        seed=seed,
        report_to="none",
        use_cpu=True,
        logging_steps=10,
        save_total_limit=1,
        early_stopping_patience=None,
        disable_tqdm=True,
        router_learning_rate=args.router_learning_rate or args.learning_rate,
        router_num_train_epochs=args.router_epochs,
        task_learning_rate=args.learning_rate,
        capability_learning_rate=args.learning_rate,
        aggregator_learning_rate=args.aggregator_learning_rate,
        aggregator_num_train_epochs=max(3.0, 2 * args.epochs),
        baseline_learning_rate=args.learning_rate,
        learning_rate=args.learning_rate,
        torch_num_threads=args.threads,
        dataloader_num_workers=0,
    )


def _target_modules(args) -> list[str] | None:
    return [m.strip() for m in args.lora_target_modules.split(",") if m.strip()] if args.lora_target_modules else None


def train_dmoerm(args, backbone, paths, labels_path, categories_yaml, run_dir: Path, seed: int | None = None) -> dict:
    """(c) DMoERM and (a) the single RM on all data, with the package pipeline (same splits for both)."""
    from dmoerm_trl.trainers import DMoERMDataArguments, DMoERMModelArguments, DMoERMTrainingPipeline

    model_args = DMoERMModelArguments(
        model_name_or_path=backbone,
        categories=str(categories_yaml),
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
        lora_target_modules=_target_modules(args),
        router_mode=args.router_mode,
        router_pooling=args.router_pooling,
        trunk_layers=args.trunk_layers,
    )
    data_args = DMoERMDataArguments(
        dataset_path=str(paths["train"]),
        capability_labels_path=str(labels_path),
        validation_split_ratio=0.15,
        min_capability_labels=8,
    )
    training_args = _training_config(args, run_dir, args.seed if seed is None else seed)
    training_args.train_baseline = True
    summary = DMoERMTrainingPipeline(model_args, data_args, training_args).run()
    return {
        name: {
            "status": info.get("status"),
            "seconds": info.get("train_seconds"),
            "eval_accuracy": (info.get("metrics") or {}).get("eval_accuracy"),
        }
        for name, info in summary.get("stages", {}).items()
    }


def train_single_rms(args, backbone, paths, run_dir: Path) -> dict:
    """(b) one RM per category and the extra seeds of (a), on exactly the pipeline's splits (``splits.json``)."""
    from transformers import AutoTokenizer

    from dmoerm_trl.data import load_preference_pairs
    from dmoerm_trl.trainers.baseline import train_baseline_reward_model

    splits = json.loads((run_dir / "splits.json").read_text(encoding="utf-8"))
    pairs = load_preference_pairs(paths["train"]).select_columns(["prompt", "chosen", "rejected", "pair_id"])
    index = {pid: i for i, pid in enumerate(pairs["pair_id"])}
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def rows(categories, parts):
        ids = [index[pid] for c in categories for part in parts for pid in splits[c].get(part, []) if pid in index]
        return pairs.select(ids).remove_columns(["pair_id"])

    jobs = (
        {} if args.ensemble_of_seed_runs else {f"seed{i}": (list(splits), args.seed + i) for i in range(1, args.seeds)}
    )
    if not args.skip_per_category_rms:
        jobs.update({f"category_{c}": ([c], args.seed) for c in splits})
    done = {}
    for name, (categories, seed) in jobs.items():
        target = run_dir / "single_rms" / name
        if (target / "config.json").exists():
            done[name] = {"status": "reused"}
            continue
        start = time.perf_counter()
        config = dataclasses.replace(
            _training_config(args, run_dir / "single_rms" / f".{name}-trainer", seed),
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            metric_for_best_model=None,
        )
        train = rows(categories, ("task", "aggregator"))
        metrics = train_baseline_reward_model(
            backbone,
            tokenizer,
            train,
            None,
            config,
            output_dir=target,
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            lora_target_modules=_target_modules(args),
        )
        done[name] = {
            "status": "done",
            "seconds": round(time.perf_counter() - start, 1),
            "pairs": len(train),
            "metrics": metrics,
        }
        print(f"trained {name} on {len(train)} pairs in {done[name]['seconds']} s", flush=True)
    return done


# --------------------------------------------------------------------------------------------------- evaluation
class CategoryRoutedReward:
    """(b) as a reward function: the prompt's TRUE category (from the world) picks that category's single RM."""

    def __init__(self, scorers: dict, world):
        from dmoerm_trl.synthetic import GoldReward

        self.scorers, self.gold = scorers, GoldReward(world, on_unknown="nan")
        self.__name__ = "single_rm_per_category"

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        categories = self.gold.categories_of(prompts)
        out = [0.0] * len(prompts)
        for category, scorer in self.scorers.items():
            rows = [i for i, c in enumerate(categories) if c == category]
            if rows:
                values = scorer([prompts[i] for i in rows], [completions[i] for i in rows]).tolist()
                for i, v in zip(rows, values):
                    out[i] = v
        return out


def reference_texts(paths, run_dir: Path, limit: int = 128) -> tuple[list, list]:
    """Prompts and responses (chosen and rejected) of up to ``limit`` training pairs of the single RMs' splits: the
    reference texts on which each ensemble member is standardised."""
    from dmoerm_trl.data import load_preference_pairs

    splits = json.loads((run_dir / "splits.json").read_text(encoding="utf-8"))
    train_ids = {pid for split in splits.values() for part in ("task", "aggregator") for pid in split.get(part, [])}
    pairs = load_preference_pairs(paths["train"])
    rows = [i for i, pid in enumerate(pairs["pair_id"]) if pid in train_ids][:limit]
    prompts = [pairs[i]["prompt"] for i in rows]
    return prompts + prompts, [pairs[i]["chosen"] for i in rows] + [pairs[i]["rejected"] for i in rows]


def build_proxies(args, run_dir: Path, world, paths=None) -> dict:
    """``{method: reward}`` for every method; rewards are (model, tokenizer) pairs or callables."""
    from dmoerm_trl.evaluation import load_reward_model
    from dmoerm_trl.rl import RewardEnsemble, RewardScorer

    dmoerm, dmoerm_tokenizer = load_reward_model(run_dir)
    members = [load_reward_model(run_dir / "baseline")]
    if args.ensemble_of_seed_runs:
        members += [
            load_reward_model(run_dir.with_name(f"run_seed{i}") / "baseline") for i in range(1, args.dmoerm_seeds)
        ]
    else:
        members += [load_reward_model(run_dir / "single_rms" / f"seed{i}") for i in range(1, args.seeds)]
    tokenizer = members[0][1]
    per_category = {}
    if not args.skip_per_category_rms:
        for category in dmoerm.config.category_names:
            model, tok = load_reward_model(run_dir / "single_rms" / f"category_{category}")
            per_category[category] = RewardScorer(model, tok, name=f"rm_{category}")
    models = [m for m, _ in members]
    ensembles = {mode: RewardEnsemble(models, mode=mode, uwo_lambda=0.5) for mode in ("mean", "wco", "uwo")}
    if paths is not None:
        # Each member standardised on the same reference texts (training texts), so that no member's offset decides.
        prompts, completions = reference_texts(paths, run_dir)
        statistics = RewardEnsemble(models, mode="mean").standardize(prompts, completions, tokenizer, batch_size=32)
        for ensemble in ensembles.values():
            ensemble.config.member_means = list(statistics.config.member_means)
            ensemble.config.member_stds = list(statistics.config.member_stds)
            ensemble.config.num_reference_texts = statistics.config.num_reference_texts
    proxies = {
        "single RM (all data)": (models[0], tokenizer),
        "single RM per category": CategoryRoutedReward(per_category, world) if per_category else None,
        "DMoERM": (dmoerm, dmoerm_tokenizer),
        "DMoERM (true category)": DMoERMWithTrueCategory(dmoerm, dmoerm_tokenizer, world),
        "ensemble mean": (ensembles["mean"], tokenizer),
        "ensemble WCO": (ensembles["wco"], tokenizer),
        "ensemble UWO": (ensembles["uwo"], tokenizer),
    }
    if args.raw_ensembles:
        proxies["ensemble WCO (raw members)"] = (RewardEnsemble(models, mode="wco"), tokenizer)
        proxies["ensemble UWO (raw members)"] = (RewardEnsemble(models, mode="uwo", uwo_lambda=0.5), tokenizer)
    for i in range(1, args.dmoerm_seeds):
        seed_dir = run_dir.with_name(f"run_seed{i}")
        proxies[f"DMoERM (seed {i})"] = load_reward_model(seed_dir)
        # The same model with the router bypassed: what routing costs this seed.
        proxies[f"DMoERM (true category, seed {i})"] = DMoERMWithTrueCategory(*proxies[f"DMoERM (seed {i})"], world)
        proxies[f"single RM (seed {i})"] = (
            members[i] if args.ensemble_of_seed_runs else load_reward_model(seed_dir / "baseline")
        )
    return {name: reward for name, reward in proxies.items() if reward is not None}


def train_seed(args, backbone, paths, labels_path, categories_yaml, out: Path, index: int, wait: bool) -> dict:
    """Seed ``index``'s DMoERM + single RM into ``OUTPUT/run_seed<index>``. With ``wait``, a run of the same seed in
    another process (its ``.training`` marker) is waited for instead of trained twice."""
    seed_dir = out / f"run_seed{index}"
    marker = seed_dir / ".training"
    if wait:
        while marker.exists():
            time.sleep(20)
    seed_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    try:
        return train_dmoerm(args, backbone, paths, labels_path, categories_yaml, seed_dir, seed=args.seed + index)
    finally:
        marker.unlink(missing_ok=True)


def seed_summary(results: dict) -> dict:
    """Mean and standard deviation over training seeds of DMoERM's and the single RM's accuracy and best-of-N gain."""
    import statistics

    out = {}
    for method in ("DMoERM", "single RM"):
        names = [("DMoERM" if method == "DMoERM" else "single RM (all data)")]
        names += sorted(n for n in results["accuracy"] if n.startswith(f"{method} (seed "))
        accuracies = [results["accuracy"][n]["overall"] for n in names]
        entry = {
            "runs": names,
            "accuracy": accuracies,
            "accuracy_mean": statistics.fmean(accuracies),
            "accuracy_sd_over_seeds": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
        }
        bon = results.get("best_of_n", {}).get("gain_at_N_per_prompt")
        if bon:
            gains = [statistics.fmean([g for g in bon[n] if not math.isnan(g)]) for n in names]
            entry.update(
                bon_gain=gains,
                bon_gain_mean=statistics.fmean(gains),
                bon_gain_sd_over_seeds=statistics.stdev(gains) if len(gains) > 1 else None,
            )
        out[method] = entry
    return out


class DMoERMWithTrueCategory:
    """DMoERM with the prompt's TRUE category given (``categories=``: the router bypassed), as a reward function.

    Tells routing errors apart from expert quality: DMoERM (routed) vs this row. :meth:`score_both` gives both in
    one go: the true-category scores, the router's choice per text, and the routed scores (re-scored only where the
    router picked another category).
    """

    def __init__(self, model, tokenizer, world, batch_size: int = 32):
        from dmoerm_trl.synthetic import GoldReward

        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_length = getattr(model.config, "max_position_embeddings", None)
        self.gold = GoldReward(world, on_unknown="nan")
        self.__name__ = "dmoerm_true_category"

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        return self._forward(prompts, completions, self.gold.categories_of(prompts))[0]

    def _forward(self, prompts, completions, categories, route: bool = False):
        import torch

        from dmoerm_trl.rl.scoring import build_reward_texts, eval_mode, is_conversational_prompt
        from dmoerm_trl.truncation import encode_keep_end

        texts = build_reward_texts(self.tokenizer, prompts, completions)
        conversational = bool(prompts) and is_conversational_prompt(prompts[0])
        values, routed = [], []
        with eval_mode(self.model), torch.no_grad():
            for start in range(0, len(texts), self.batch_size):  # tokenized exactly as RewardScorer does
                # over-long texts keep their end, as RewardScorer and `dmoerm eval` do
                encoded, _ = encode_keep_end(
                    self.tokenizer, texts[start : start + self.batch_size], self.max_length, not conversational
                )
                batch = self.tokenizer.pad(
                    {"input_ids": encoded}, padding=True, padding_side="right", return_tensors="pt"
                )
                ids, mask = batch["input_ids"], batch["attention_mask"]
                if route:
                    routed += self.model.route(ids, mask).argmax(-1).tolist()
                    continue
                out = self.model(
                    input_ids=ids, attention_mask=mask, categories=categories[start : start + self.batch_size]
                )
                values += out.logits.reshape(-1).float().tolist()
        return values, routed

    def score_both(self, prompts, completions) -> dict:
        names = self.model.config.category_names
        true = [names.index(c) for c in self.gold.categories_of(prompts)]
        true_scores = self._forward(prompts, completions, true)[0]
        routed = self._forward(prompts, completions, None, route=True)[1]
        wrong = [i for i, (r, t) in enumerate(zip(routed, true)) if r != t]
        routed_scores = list(true_scores)
        if wrong:
            rescored = self._forward(
                [prompts[i] for i in wrong], [completions[i] for i in wrong], [routed[i] for i in wrong]
            )[0]
            for i, value in zip(wrong, rescored):
                routed_scores[i] = value
        return {"true": true_scores, "routed": routed_scores, "routed_ids": routed, "true_ids": true}


def run_parallel(tasks: list, workers: int = 4) -> list:
    """Run zero-argument callables several at a time (threads: torch releases the GIL) and return their results."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks)))) as pool:
        return [future.result() for future in [pool.submit(task) for task in tasks]]


def score_once(
    proxies: dict, prompts: list, completions: list, check_rows: int = 4, cache: dict | None = None
) -> dict:
    """``{method: (2n,) scores}``: every model scores the texts ONCE; ensembles combine their members' cached scores
    with :meth:`RewardEnsemble.combine` (the same mean / min / mean - lambda var), checked against the ensemble's own
    forward on ``check_rows`` texts."""
    import torch

    from dmoerm_trl.rl import RewardEnsemble, RewardScorer

    cache = {} if cache is None else cache  # id(model) -> scores

    def model_scores(model, tokenizer, name):
        if id(model) not in cache:
            cache[id(model)] = RewardScorer(model, tokenizer, batch_size=32, name=name)(prompts, completions).float()
        return cache[id(model)]

    # Score every distinct model in parallel threads first (torch releases the GIL: on a shared machine the
    # scoring of several models then proceeds side by side); the loop below reads the cache.
    jobs = {}
    for name, reward in proxies.items():
        if isinstance(reward, tuple) and isinstance(reward[0], RewardEnsemble):
            for i, member in enumerate(reward[0].members):
                jobs.setdefault(id(member), (member, reward[1], f"{name}[{i}]"))
        elif isinstance(reward, tuple) and not (
            name == "DMoERM" and isinstance(proxies.get("DMoERM (true category)"), DMoERMWithTrueCategory)
        ):
            jobs.setdefault(id(reward[0]), (reward[0], reward[1], name))
    true_category = proxies.get("DMoERM (true category)")
    tasks = [lambda job=job: model_scores(*job) for job in jobs.values()]
    if isinstance(true_category, DMoERMWithTrueCategory):
        tasks.insert(0, lambda: true_category.score_both(prompts, completions))
    done = run_parallel(tasks)
    scores, routing, checked = {}, (done[0] if isinstance(true_category, DMoERMWithTrueCategory) else None), False
    for name, reward in proxies.items():
        start = time.perf_counter()
        # (other seeds' true-category rows are DMoERMWithTrueCategory too: they score through their own __call__)
        if name in ("DMoERM", "DMoERM (true category)") and isinstance(
            proxies.get("DMoERM (true category)"), DMoERMWithTrueCategory
        ):
            # Both DMoERM rows from one pass with the true category + the router + re-scoring the misrouted texts;
            # the routed scores are checked against the model's own forward (router inside) on check_rows texts.
            if routing is None:
                routing = proxies["DMoERM (true category)"].score_both(prompts, completions)
            if not checked:
                checked = True
                model, tokenizer = proxies["DMoERM"]
                direct = RewardScorer(model, tokenizer, batch_size=check_rows)(
                    prompts[:check_rows], completions[:check_rows]
                )
                if not torch.allclose(direct, torch.tensor(routing["routed"][:check_rows]), atol=1e-4, rtol=1e-4):
                    raise AssertionError(
                        f"DMoERM routed scores {routing['routed'][:check_rows]} != its forward {direct.tolist()}"
                    )
            scores[name] = torch.tensor(routing["true" if name != "DMoERM" else "routed"], dtype=torch.float32)
        elif isinstance(reward, tuple) and isinstance(reward[0], RewardEnsemble):
            ensemble, tokenizer = reward
            members = [model_scores(m, tokenizer, f"{name}[{i}]") for i, m in enumerate(ensemble.members)]
            scores[name] = ensemble.combine(torch.stack(members, dim=-1)).float()
            direct = RewardScorer(ensemble, tokenizer, batch_size=check_rows)(
                prompts[:check_rows], completions[:check_rows]
            )
            if not torch.allclose(direct, scores[name][:check_rows], atol=1e-4, rtol=1e-4):
                raise AssertionError(
                    f"{name}: cached member scores {scores[name][:check_rows].tolist()} != "
                    f"RewardEnsemble forward {direct.tolist()}"
                )
        elif isinstance(reward, tuple):
            scores[name] = model_scores(reward[0], reward[1], name)
        else:
            scores[name] = torch.tensor(reward(prompts=prompts, completions=completions), dtype=torch.float32)
        print(f"scored {len(prompts)} texts with {name} in {time.perf_counter() - start:.1f} s", flush=True)
    return scores


def gold_accuracy(
    proxies: dict, test_path, categories_yaml, max_length: int, eval_pairs_per_category: int | None = None
) -> tuple[dict, dict]:
    """Accuracy against the gold per method (with standard errors) and the per-pair correctness (for the tests)."""
    from dmoerm_trl.data import load_preference_pairs
    from dmoerm_trl.evaluation import pairwise_accuracy
    from dmoerm_trl.rl.scoring import build_reward_texts

    pairs = load_preference_pairs(test_path, categories=str(categories_yaml))
    if eval_pairs_per_category:
        seen: dict[str, int] = {}
        keep_rows = []
        for i, category in enumerate(pairs["category"]):
            seen[category] = seen.get(category, 0) + 1
            if seen[category] <= eval_pairs_per_category:
                keep_rows.append(i)
        pairs = pairs.select(keep_rows)
    prompts, categories = list(pairs["prompt"]), list(pairs["category"])
    chosen, rejected = list(pairs["chosen"]), list(pairs["rejected"])
    # Pairs longer than the backbone accepts are scored on their end (oldest prompt tokens dropped, the response
    # kept), as `dmoerm eval` and every scorer of the package do; they are counted.
    model, tokenizer = proxies["DMoERM"]
    limit = min(x for x in (max_length, getattr(model.config, "max_position_embeddings", None)) if x)
    lengths = [
        len(tokenizer(text, add_special_tokens=False)["input_ids"])
        for text in build_reward_texts(tokenizer, prompts + prompts, chosen + rejected)
    ]
    truncated = sum(max(lengths[i], lengths[len(prompts) + i]) > limit for i in range(len(prompts)))
    n = len(prompts)
    scores = score_once(proxies, prompts + prompts, chosen + rejected)
    result, correct = {}, {}
    for name, values in scores.items():
        values = values.tolist()
        report = pairwise_accuracy(values[:n], values[n:], categories)
        correct[name] = [int(values[i] > values[n + i]) for i in range(n)]
        result[name] = {
            "overall": report["overall"]["accuracy"],
            "pairs": report["overall"]["total"],
            "stderr": stderr(report["overall"]["accuracy"], report["overall"]["total"]),
            "per_category": {c: v["accuracy"] for c, v in report["per_category"].items()},
            "per_category_pairs": {c: v["total"] for c, v in report["per_category"].items()},
            "per_category_stderr": {c: stderr(v["accuracy"], v["total"]) for c, v in report["per_category"].items()},
            "reward_ties": report["overall"]["reward_ties"],
            "test_pairs_truncated": truncated,
        }
    return result, {"categories": categories, "correct": correct}


def router_accuracy(
    run_dir: Path, test_path, categories_yaml, proxies: dict, max_length: int, cross_check: bool, name: str = "DMoERM"
) -> dict:
    """Router accuracy of the DMoERM ``proxies[name]`` on the test prompts alone and with a response.
    ``cross_check``: through ``evaluate_reward_models`` on ``run_dir`` (which also re-scores DMoERM on every pair: the
    test compares it with this script's number); otherwise ``evaluate_router`` only (one router pass per sequence)."""
    if cross_check:
        from dmoerm_trl.evaluation import evaluate_reward_models

        report = evaluate_reward_models(run_dir, test_path)
        router = report.get("router") or {}
        accuracy = (report.get("dmoerm") or {}).get("overall", {}).get("accuracy")
    else:
        from dmoerm_trl.data import load_preference_pairs
        from dmoerm_trl.evaluation import evaluate_router, prepare_pairs

        model, tokenizer = proxies[name]
        pairs = load_preference_pairs(test_path, categories=str(categories_yaml))
        router = evaluate_router(model, tokenizer, prepare_pairs(pairs, tokenizer, max_length, "test pairs", {}), 32)
        accuracy = None
    return {
        "prompt": (router.get("prompt") or {}).get("accuracy"),
        "full": (router.get("full") or {}).get("accuracy"),
        "per_category_prompt": {
            c: v["accuracy"] for c, v in (router.get("prompt") or {}).get("per_category", {}).items()
        },
        "dmoerm_accuracy_via_evaluation_module": accuracy,
    }


def bon_prompts(args, heldout_path) -> list:
    """``--bon-prompts`` held-out prompts, round-robin over the categories."""
    rows = [json.loads(line) for line in Path(heldout_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    by_category: dict[str, list] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row["prompt"])
    prompts, i = [], 0
    while len(prompts) < args.bon_prompts and any(i < len(v) for v in by_category.values()):
        prompts += [v[i] for v in by_category.values() if i < len(v)][: args.bon_prompts - len(prompts)]
        i += 1
    return prompts


def _policy_sampler(args, policy_path, gold):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from dmoerm_trl.rl import BestOfNSampler

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32).eval()
    generation = GenerationConfig(
        max_new_tokens=args.bon_max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0
    )
    return BestOfNSampler(
        policy,
        tokenizer,
        gold,
        n=args.bon_samples,
        generation_config=generation,
        batch_size=2,
        reward_batch_size=16,
        seed=args.seed,
    )


def policy_samples(args, policy_path, prompts: list, out: Path, gold) -> list[list[str]]:
    """The policy's ``N`` samples per prompt, drawn once and kept in ``bon_samples.json`` (reused while the policy,
    prompts, N, tokens and seed are the same): every trained model (and every seed) is compared on the same
    samples, and a rerun skips the sampling, by far the slowest step on CPU."""
    key = {
        "policy": str(policy_path),
        "prompts": prompts,
        "n": args.bon_samples,
        "max_new_tokens": args.bon_max_new_tokens,
        "seed": args.seed,
    }
    path = out / "bon_samples.json"
    while args.wait_for_samples and not path.exists():
        time.sleep(15)
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        old = cached.get("key", {})
        # The prompts are picked round-robin and sampled in order from one seeded stream, so the first k prompts'
        # samples of a larger run are exactly those a run with k prompts draws.
        if {**old, "prompts": None} == {**key, "prompts": None} and old.get("prompts", [])[: len(prompts)] == prompts:
            print(f"reusing the {len(prompts)} x {args.bon_samples} policy samples in {path}", flush=True)
            return cached["candidates"][: len(prompts)]
    start = time.perf_counter()
    candidates = _policy_sampler(args, policy_path, gold).generate(prompts, n=args.bon_samples)
    seconds = round(time.perf_counter() - start, 1)
    _write_atomic(
        path,
        json.dumps({"key": key, "candidates": candidates, "seconds": seconds, "load_average": list(os.getloadavg())}),
    )
    print(f"sampled {len(prompts)} x {args.bon_samples} in {seconds} s -> {path}", flush=True)
    return candidates


def best_of_n(args, policy_path, proxies: dict, world, heldout_path, out: Path) -> dict:
    import torch

    from dmoerm_trl.rl import plot_overoptimization
    from dmoerm_trl.rl.best_of_n import expected_best_of_n
    from dmoerm_trl.rl.overoptimization import write_records_csv
    from dmoerm_trl.synthetic import GoldReward

    prompts = bon_prompts(args, heldout_path)
    gold = GoldReward(world, on_unknown="nan")
    candidates = policy_samples(args, policy_path, prompts, out, gold)
    sampler = _policy_sampler(args, policy_path, gold)
    flat_prompts = [p for p, texts in zip(prompts, candidates) for _ in texts]
    flat = [t for texts in candidates for t in texts]
    # Every proxy scores the samples once, distinct models in parallel threads; evaluate() then reads the scores.
    member_cache: dict = {}
    precomputed = score_once(proxies, flat_prompts, flat, cache=member_cache)

    def cached(values):
        def reward(prompts=None, completions=None, **kwargs):
            if len(completions) != len(values):
                raise ValueError("precomputed scores are for another set of samples")
            return values.tolist()

        return reward

    result = sampler.evaluate(
        prompts,
        gold=gold,
        n=args.bon_samples,
        candidates=candidates,
        proxies={**{name: cached(v) for name, v in precomputed.items()}, "gold (oracle)": gold},
    )
    write_records_csv(result.records, out / "best_of_n.csv")
    fits = plot_overoptimization(
        result.records,
        out / "overoptimization.png",
        title="Fidelity: best-of-n gold gain vs sqrt(KL), each method as the proxy",
    )
    curves: dict[str, dict] = {}
    for record in result.records:
        curves.setdefault(record["proxy"], {})[int(record["n"])] = {
            "sqrt_kl": round(record["sqrt_kl"], 4),
            "gold": round(record["gold_reward"], 4),
            "gold_sem": round(record["gold_sem"], 4),
            "proxy": round(record["proxy_reward"], 4),
        }
    # Paired over prompts: DMoERM's best-of-N gold gain minus each other proxy's (same samples), bootstrap 95% CI.
    gains = {
        name: (
            expected_best_of_n(scores, result.gold_scores, args.bon_samples) - result.gold_scores.double().mean(dim=1)
        ).tolist()
        for name, scores in result.proxy_scores.items()
    }
    paired = {
        f"DMoERM vs {name}": paired_mean_difference(gains["DMoERM"], gains[name], seed=args.seed)
        for name in gains
        if name not in ("DMoERM", "gold (oracle)")
    }
    # How each DMoERM routes the policy's own samples (misrouted = another category than the prompt's).
    true = gold.categories_of(flat_prompts)
    dmoerms = {
        name: reward for name, reward in proxies.items() if name.startswith("DMoERM") and isinstance(reward, tuple)
    }
    routed_ids = run_parallel(
        [
            lambda reward=reward: DMoERMWithTrueCategory(reward[0], reward[1], world)._forward(
                flat_prompts, flat, None, route=True
            )[1]
            for reward in dmoerms.values()
        ]
    )
    misrouting = {}
    for (name, (model, _)), routed in zip(dmoerms.items(), routed_ids):
        wrong = sum(model.config.category_names[r] != c for r, c in zip(routed, true))
        misrouting[name] = {"samples": len(flat), "misrouted": wrong, "rate": round(wrong / max(1, len(flat)), 4)}
    # Which member decides WCO's minimum on the policy samples: raw, mostly the member with the lowest offset.
    wco_member_share = None
    if "ensemble WCO" in proxies:
        from dmoerm_trl.rl import RewardScorer

        ensemble, tokenizer = proxies["ensemble WCO"]
        members = torch.stack(
            [
                member_cache[id(m)].double()
                if id(m) in member_cache
                else RewardScorer(m, tokenizer, batch_size=32)(flat_prompts, flat).double()
                for m in ensemble.members
            ],
            dim=-1,
        )
        lowest = int(members.mean(0).argmin())
        standardized = (
            members - torch.tensor(ensemble.config.member_means or [0.0] * members.shape[1])
        ) / torch.tensor(ensemble.config.member_stds or [1.0] * members.shape[1])
        wco_member_share = {
            "lowest_mean_member": lowest,
            "member_means_on_samples": members.mean(0).tolist(),
            "raw": (members.argmin(-1) == lowest).double().mean().item(),
            "standardized": (standardized.argmin(-1) == lowest).double().mean().item(),
        }
    return {
        "prompts": len(prompts),
        "samples_per_prompt": args.bon_samples,
        "policy_sample_misrouting": misrouting,
        "wco_minimum_is_lowest_offset_member": wco_member_share,
        "nan_gold": int(torch.isnan(result.gold_scores).sum()),
        "curves": curves,
        "fits": [fit.summary() for fit in fits],
        "gain_at_N_per_prompt": gains,
        "paired_gain_at_N": paired,
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    _fill_defaults(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times, start = {}, time.perf_counter()

    def tick(step):
        times[step] = round(time.perf_counter() - start - sum(times.values()), 1)
        print(f"== {step} done ({times[step]} s; total {time.perf_counter() - start:.0f} s)", flush=True)

    backbone, policy = prepare_backbone(args, out)
    world, categories, paths, categories_yaml, agreement, n_train, n_test = make_data(args, out)
    tick("data")
    if args.sample_only:
        from dmoerm_trl.synthetic import GoldReward

        policy_samples(
            args, policy, bon_prompts(args, paths["heldout_prompts"]), out, GoldReward(world, on_unknown="nan")
        )
        tick("policy samples")
        return {"seconds": times}
    labels = label(args, world, paths, categories_yaml, out)
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
    _write_atomic(out / "per_pair_correct.json", json.dumps(per_pair))
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
    _write_atomic(out / "fidelity.json", json.dumps(results, indent=2, default=str))  # partial: before best-of-n
    if not args.skip_bon:
        results["best_of_n"] = best_of_n(args, policy, proxies, world, paths["heldout_prompts"], out)
        tick("best-of-n")
    if args.dmoerm_seeds > 1:
        results["seeds"] = seed_summary(results)
    results["seconds"] = times
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    results["load_average"] = list(os.getloadavg())
    table = markdown(results)
    _write_atomic(out / "fidelity.json", json.dumps(results, indent=2, default=str))
    _write_atomic(out / "fidelity.md", table + "\n")
    plot_accuracy(results, out / "accuracy.png")
    print("\n" + table)
    print(
        f"\nwall time {results['wall_seconds']} s; results in {out}/fidelity.json, fidelity.md, accuracy.png"
        + ("" if args.skip_bon else ", overoptimization.png")
    )
    return results


if __name__ == "__main__":
    main()
