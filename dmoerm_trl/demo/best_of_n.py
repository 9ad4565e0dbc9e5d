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


def run_best_of_n(policy_path: str, run_dir: Path, heldout_path: str, world, sizes, seed: int, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from ..evaluation import load_reward_model
    from ..rl import BestOfNSampler, fit_records, plot_overoptimization
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
    generation = GenerationConfig(max_new_tokens=sizes.bon_max_new_tokens, do_sample=True, temperature=1.0, top_k=0,
                                  top_p=1.0)
    sampler = BestOfNSampler(policy, tokenizer, (dmoerm, dmoerm_tokenizer), n=sizes.bon_samples,
                             generation_config=generation, batch_size=4, reward_batch_size=16, seed=seed)
    result = sampler.evaluate(prompts, gold=gold, n=sizes.bon_samples, proxies={
        "DMoERM": (dmoerm, dmoerm_tokenizer), "single RM": (baseline, baseline_tokenizer), "gold (oracle)": gold})
    write_records_csv(result.records, out / "best_of_n.csv")
    fits = plot_overoptimization(result.records, out / "overoptimization.png",
                                 title="Best-of-n with SmolLM2: gold and proxy reward gain vs sqrt(KL)")
    curves: dict[str, dict] = {}
    for record in result.records:
        curves.setdefault(record["proxy"], {})[record["n"]] = {
            "sqrt_kl": round(record["sqrt_kl"], 4), "gold": round(record["gold_reward"], 4),
            "gold_sem": round(record["gold_sem"], 4), "proxy": round(record["proxy_reward"], 4)}
    summary = {}
    for name, curve in curves.items():
        ns = sorted(curve)
        summary[name] = {"gold_at_1": curve[ns[0]]["gold"], "gold_at_N": curve[ns[-1]]["gold"],
                         "gold_gain": round(curve[ns[-1]]["gold"] - curve[ns[0]]["gold"], 4),
                         "peak_gold": max(c["gold"] for c in curve.values())}
    examples = []
    gold_scores = result.gold_scores
    for i, row in enumerate(rows[: min(3, len(rows))]):
        pick = {name: int(scores[i].argmax()) for name, scores in result.proxy_scores.items()}
        examples.append({
            "category": row["category"], "prompt": row["prompt"][-1]["content"],
            "picked": {name: {"text": result.candidates[i][j], "gold": round(float(gold_scores[i, j]), 3)}
                       for name, j in pick.items()},
            "gold_mean_of_samples": round(float(torch.nan_to_num(gold_scores[i]).mean()), 3)})
    return {"prompts": len(prompts), "samples_per_prompt": sizes.bon_samples, "max_new_tokens": sizes.bon_max_new_tokens,
            "nan_gold": int(torch.isnan(gold_scores).sum()), "curves": curves, "summary": summary,
            "fits": [fit.summary() for fit in fits], "examples": examples,
            "fit_note": f"{len(fit_records(result.records))} curves fitted with Gao et al.'s best-of-n form"}
