"""Training of the fidelity benchmark's methods (``benchmarks/fidelity.py`` step 3): DMoERM and the single RM on all
data through the package pipeline, one single RM per category and the ensembles' extra seeds on the pipeline's
splits, and the other training seeds' runs.

Example:
    >>> from fidelity_train import train_dmoerm, train_single_rms  # doctest: +SKIP
    >>> stages = train_dmoerm(args, backbone, paths, labels_path, categories_yaml, out / "run")  # doctest: +SKIP
    >>> stages["router"]["status"]  # doctest: +SKIP
    'done'
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path


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
