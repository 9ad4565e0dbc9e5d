"""The demo's best-of-n step: SmolLM2 samples N answers per held-out prompt; DMoERM, the single RM and the gold
itself (the ceiling) each pick the best of n; the unbiased estimator gives gold and proxy reward against sqrt(KL).

Example:
    >>> from dmoerm_trl.demo.best_of_n import run_best_of_n  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path


def _pick_prompts(path: str, count: int) -> list[dict]:
    """``count`` held-out prompts, round-robin over the categories (first-seen order within each)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    picked, index = [], 0
    while len(picked) < count and any(index < len(v) for v in by_category.values()):
        for rows_of_category in by_category.values():
            if index < len(rows_of_category) and len(picked) < count:
                picked.append(rows_of_category[index])
        index += 1
    return picked


def policy_samples(sampler, policy_path: str, prompts: list, sizes, seed: int, out: Path) -> list[list[str]]:
    """The policy's samples, drawn once and kept in ``bon_samples.json`` (reused by a rerun with the same policy,
    prompts, N, tokens and seed: sampling is the slowest part of the step on CPU)."""
    import time

    from ..utils.io import atomic_write_text

    key = {
        "policy": str(policy_path),
        "prompts": prompts,
        "n": sizes.bon_samples,
        "max_new_tokens": sizes.bon_max_new_tokens,
        "seed": seed,
    }
    path = out / "bon_samples.json"
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            print(f"reusing the policy samples in {path}", flush=True)
            policy_samples.last_seconds = None  # reused: not drawn in this run
            return cached["candidates"]
    start = time.perf_counter()
    candidates = sampler.generate(prompts, n=sizes.bon_samples)
    seconds = round(time.perf_counter() - start, 1)
    atomic_write_text(path, json.dumps({"key": key, "candidates": candidates, "seconds": seconds}))
    policy_samples.last_seconds = seconds
    return candidates


def policy_sample_routing(model, tokenizer, prompts: list, candidates: list[list[str]], categories: list[str]) -> dict:
    """How DMoERM routes the policy's own samples (misrouted = routed to a category other than the prompt's),
    and its (calibrated) rewards on them per category, next to each category's calibration statistics."""
    import statistics

    conversations = [
        list(prompt) + [{"role": "assistant", "content": text}]
        for prompt, texts in zip(prompts, candidates)
        for text in texts
    ]
    true = [category for category, texts in zip(categories, candidates) for _ in texts]
    scored = model.compute_rewards(conversations, tokenizer, batch_size=16)
    misrouted = [s["category"] != c for s, c in zip(scored, true)]
    per_category = {}
    for category in model.config.category_names:
        rows = [i for i, c in enumerate(true) if c == category]
        rewards = [scored[i]["reward"] for i in rows]
        aggregator = model.aggregators[model._slug(category)]
        per_category[category] = {
            "samples": len(rows),
            "misrouted": sum(misrouted[i] for i in rows),
            "reward_mean": round(statistics.fmean(rewards), 4) if rewards else None,
            "reward_std": round(statistics.stdev(rewards), 4) if len(rewards) > 1 else None,
            "calibration_mean": round(aggregator.reward_mean.item(), 4),
            "calibration_std": round(aggregator.reward_std.item(), 4),
        }
    return {
        "samples": len(true),
        "misrouted": sum(misrouted),
        "misrouting_rate": round(sum(misrouted) / max(1, len(true)), 4),
        "calibrated": bool(model.config.calibrate_rewards),
        "per_category": per_category,
    }


def run_best_of_n(policy_path: str, run_dir: Path, heldout_path: str, world, sizes, seed: int, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from ..evaluation import load_reward_model
    from ..rl import (
        BestOfNSampler,
        best_of_n_curves,
        best_of_n_gains,
        fit_records,
        nan_gold_counts,
        plot_overoptimization,
    )
    from ..rl.overoptimization import write_records_csv
    from ..synthetic import GoldReward

    rows = _pick_prompts(heldout_path, sizes.bon_prompts)
    prompts = [row["prompt"] for row in rows]
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32).eval()
    dmoerm, dmoerm_tokenizer = load_reward_model(run_dir)
    baseline, baseline_tokenizer = load_reward_model(run_dir / "baseline")
    gold = GoldReward(world, on_unknown="nan")
    generation = GenerationConfig(
        max_new_tokens=sizes.bon_max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0
    )
    sampler = BestOfNSampler(
        policy,
        tokenizer,
        (dmoerm, dmoerm_tokenizer),
        n=sizes.bon_samples,
        generation_config=generation,
        batch_size=4,
        reward_batch_size=16,
        seed=seed,
    )
    candidates = policy_samples(sampler, policy_path, prompts, sizes, seed, out)
    result = sampler.evaluate(
        prompts,
        gold=gold,
        n=sizes.bon_samples,
        candidates=candidates,
        proxies={
            "DMoERM": (dmoerm, dmoerm_tokenizer),
            "single RM": (baseline, baseline_tokenizer),
            "gold (oracle)": gold,
        },
    )
    routing = policy_sample_routing(dmoerm, dmoerm_tokenizer, prompts, candidates, [row["category"] for row in rows])
    write_records_csv(result.records, out / "best_of_n.csv")
    fits = plot_overoptimization(
        result.records,
        out / "overoptimization.png",
        title="Best-of-n with SmolLM2: gold and proxy reward gain vs sqrt(KL)",
    )
    curves = best_of_n_curves(result.records)
    # Per prompt: the expected gold of the best-of-N pick minus the mean gold of the prompt's samples (its standard
    # error over prompts is the uncertainty of the gain). A prompt with NaN gold has a NaN gain, left out below and
    # counted in "nan_gold_prompts".
    gold_scores = result.gold_scores
    gains = best_of_n_gains(result, sizes.bon_samples, decimals=4)
    summary = {}
    for name, curve in curves.items():
        ns = sorted(curve)
        values = torch.tensor(gains[name], dtype=torch.float64)
        values = values[~torch.isnan(values)]
        summary[name] = {
            "gold_at_1": curve[ns[0]]["gold"],
            "gold_at_N": curve[ns[-1]]["gold"],
            "gold_gain": round(curve[ns[-1]]["gold"] - curve[ns[0]]["gold"], 4),
            "gold_gain_sem": round(float(values.std() / len(values) ** 0.5), 4) if len(values) > 1 else None,
            "peak_gold": max(c["gold"] for c in curve.values()),
        }
    examples = []
    for i, row in enumerate(rows[: min(3, len(rows))]):
        pick = {name: int(scores[i].argmax()) for name, scores in result.proxy_scores.items()}
        examples.append(
            {
                "category": row["category"],
                "prompt": row["prompt"][-1]["content"],
                "picked": {
                    name: {"text": result.candidates[i][j], "gold": round(float(gold_scores[i, j]), 3)}
                    for name, j in pick.items()
                },
                "gold_mean_of_samples": round(float(gold_scores[i].mean()), 3),  # NaN if a gold is NaN
            }
        )
    return {
        "prompts": len(prompts),
        "samples_per_prompt": sizes.bon_samples,
        "max_new_tokens": sizes.bon_max_new_tokens,
        **nan_gold_counts(gold_scores),  # "nan_gold" samples, "nan_gold_prompts" (their gains are NaN)
        "curves": curves,
        "summary": summary,
        "sampling_seconds": policy_samples.last_seconds,  # None: samples reused from bon_samples.json
        "fits": [fit.summary() for fit in fits],
        "examples": examples,
        "policy_sample_routing": routing,
        "gain_at_N_per_prompt": gains,
        "fit_note": f"{len(fit_records(result.records))} curves fitted with Gao et al.'s best-of-n form",
    }
