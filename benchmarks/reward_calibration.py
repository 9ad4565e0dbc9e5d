"""Which per-category reward calibration? Measured on a trained fidelity run and its policy samples.

A DMoERM's categories each end in their own aggregator, trained with a pairwise loss that cannot see a constant
(or, with weight decay and early stopping, a scale) per category. Wherever rewards of different categories meet,
their offsets and scales matter: a response routed to another category, a PPO batch whose advantages are whitened
over prompts of several categories, a pooled ranking. This script compares calibrations of each category's raw
aggregator output, every one computed from the category's phase-3 training texts only (the features the pipeline
cached in ``stages/aggregator__<category>/features.safetensors``):

- ``none``: the raw output;
- ``center``: minus its mean (offsets removed, scales kept);
- ``standardize``: minus its mean, divided by its standard deviation (the package's default);
- ``robust``: minus its median, divided by its interquartile range / 1.349 (outlier-resistant).

On the policy's best-of-n samples (``bon_samples.json`` of the same fidelity output), with the gold of the synthetic
world, it reports per calibration: the best-of-N gold gain when the router reads the whole text (misrouted samples
compete on another category's scale: the case the issue measured), the Spearman correlation of reward and gold over
all samples pooled across categories, the same after removing each prompt's mean (within-prompt ranking, what PPO's
whitened advantages use when prompts of several categories share a batch), and the share of the reward's variance
that lies between categories (the gold's own share for reference).

Example:
    python benchmarks/reward_calibration.py --fidelity-output /tmp/fidelity [--run run]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

METHODS = ("none", "center", "standardize", "robust")


def calibration(raw: torch.Tensor, method: str) -> tuple[float, float]:
    """``(shift, scale)`` so that the calibrated reward is ``(raw - shift) / scale``."""
    raw = raw.double()
    if method == "none":
        return 0.0, 1.0
    if method == "center":
        return raw.mean().item(), 1.0
    if method == "standardize":
        return raw.mean().item(), max(raw.std().item(), 1e-6)
    low, median, high = torch.quantile(raw, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return median, max((high - low) / 1.349, 1e-6)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    keep = ~(torch.isnan(a) | torch.isnan(b))
    ra = a[keep].argsort().argsort().double()
    rb = b[keep].argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def between_share(values: torch.Tensor, groups: list[str]) -> float:
    keep = ~torch.isnan(values)
    values = values[keep].double()
    groups = [g for g, k in zip(groups, keep.tolist()) if k]
    total = ((values - values.mean()) ** 2).sum()
    between = sum(
        ((values[[i for i, g in enumerate(groups) if g == c]].mean() - values.mean()) ** 2)
        * sum(g == c for g in groups)
        for c in set(groups)
    )
    return float(between / total)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fidelity-output", required=True, help="A benchmarks/fidelity.py output folder.")
    parser.add_argument("--run", default="run", help="The trained run inside it (default: run).")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from safetensors.torch import load_file

    from dmoerm_trl.evaluation import load_reward_model
    from dmoerm_trl.rl.best_of_n import best_of_n_gain
    from dmoerm_trl.rl.scoring import build_reward_texts
    from dmoerm_trl.synthetic import GoldReward, SyntheticWorld

    out = Path(args.fidelity_output)
    run = out / args.run
    model, tokenizer = load_reward_model(run)
    model.config.calibrate_rewards = False  # raw aggregator outputs; each calibration is applied below
    names = model.config.category_names
    raw_train = {}
    for category in names:
        features = load_file(str(run / "stages" / f"aggregator__{model._slug(category)}" / "features.safetensors"))
        stacked = torch.cat([features["train_chosen"], features["train_rejected"]])
        aggregator = model.aggregators[model._slug(category)]
        with torch.no_grad():
            raw_train[category] = aggregator(stacked.to(aggregator.out.weight.dtype)).reshape(-1).double()
    stats = {m: {c: calibration(raw_train[c], m) for c in names} for m in METHODS}

    cached = json.loads((out / "bon_samples.json").read_text(encoding="utf-8"))
    prompts, candidates = cached["key"]["prompts"], cached["candidates"]
    n = len(candidates[0])
    flat_prompts = [p for p, texts in zip(prompts, candidates) for _ in texts]
    flat = [t for texts in candidates for t in texts]
    world = SyntheticWorld(names)
    gold = GoldReward(world, on_unknown="nan")
    true = gold.categories_of(flat_prompts)
    gold_scores = torch.tensor(gold(prompts=flat_prompts, completions=flat), dtype=torch.float64)
    texts = build_reward_texts(tokenizer, flat_prompts, flat)
    routed_raw, routed_ids, true_raw = [], [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            batch = tokenizer(
                list(texts[start : start + 32]),
                return_tensors="pt",
                padding=True,
                padding_side="right",
                add_special_tokens=False,
            )
            # The whole text as the router's input (prompt_mask = every real token): the routing before prompt-only
            # routing, where a response could send a sample to another category's scale.
            routed = model(**batch, prompt_mask=batch["attention_mask"])
            routed_raw += routed.logits[:, 0].double().tolist()
            routed_ids += routed.category_ids.tolist()
            given = model(**batch, categories=true[start : start + 32])
            true_raw += given.logits[:, 0].double().tolist()
    routed_names = [names[i] for i in routed_ids]
    misrouted = sum(r != t for r, t in zip(routed_names, true))
    results = {
        "samples": len(flat),
        "prompts": len(prompts),
        "misrouted": misrouted,
        "methods": {},
        "gold_between_category_share": between_share(gold_scores, true),
        "calibration": {m: {c: list(v) for c, v in s.items()} for m, s in stats.items()},
    }
    gold_matrix = gold_scores.reshape(len(prompts), n)
    for method in METHODS:

        def apply(values, cats, method=method):
            return torch.tensor(
                [(v - stats[method][c][0]) / stats[method][c][1] for v, c in zip(values, cats)], dtype=torch.float64
            )

        routed = apply(routed_raw, routed_names)
        given = apply(true_raw, true)
        gains = best_of_n_gain(routed.reshape(len(prompts), n), gold_matrix, n)
        gains = gains[~torch.isnan(gains)]  # prompts with NaN gold have no gain (best_of_n_gain)
        centred = given.reshape(len(prompts), n) - given.reshape(len(prompts), n).mean(1, keepdim=True)
        gold_centred = gold_matrix - gold_matrix.nanmean(1, keepdim=True)
        results["methods"][method] = {
            "bon_gain_full_text_routing": float(gains.mean()),
            "bon_gain_sem": float(gains.std() / math.sqrt(len(gains))),
            "spearman_pooled": spearman(given, gold_scores),
            "spearman_within_prompt": spearman(centred.reshape(-1), gold_centred.reshape(-1)),
            "between_category_share": between_share(given, true),
        }
    print(
        f"{len(flat)} policy samples of {len(prompts)} prompts; {misrouted} routed (on the whole text) to another "
        f"category; the gold's between-category variance share: {results['gold_between_category_share']:.2f}\n"
    )
    print(
        "| calibration | best-of-N gold gain, full-text routing | Spearman with gold, pooled | within prompt | "
        "between-category share of reward variance |"
    )
    print("|---|---|---|---|---|")
    for method, r in results["methods"].items():
        print(
            f"| {method} | {r['bon_gain_full_text_routing']:+.3f} ± {r['bon_gain_sem']:.3f} | "
            f"{r['spearman_pooled']:+.3f} | {r['spearman_within_prompt']:+.3f} | {r['between_category_share']:.2f} |"
        )
    (out / "reward_calibration.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
