"""Best-of-n of the fidelity benchmark (``benchmarks/fidelity.py`` step 5): the policy's samples on held-out prompts
(drawn once, kept in ``bon_samples.json``), gold reward vs sqrt(KL) with each method as the proxy, DMoERM's paired
gain against every other proxy, how each DMoERM routes the samples and which member decides WCO's minimum.

Example:
    >>> from fidelity_bon import best_of_n  # doctest: +SKIP
    >>> result = best_of_n(args, policy, proxies, world, paths["heldout_prompts"], out)  # doctest: +SKIP
    >>> sorted(result["curves"]["DMoERM"])  # doctest: +SKIP
    [1, 2, 4]
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from fidelity_report import paired_mean_difference
from fidelity_score import DMoERMWithTrueCategory, run_parallel, score_once


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
    from dmoerm_trl.utils.io import atomic_write_text

    start = time.perf_counter()
    candidates = _policy_sampler(args, policy_path, gold).generate(prompts, n=args.bon_samples)
    seconds = round(time.perf_counter() - start, 1)
    atomic_write_text(
        path,
        json.dumps({"key": key, "candidates": candidates, "seconds": seconds, "load_average": list(os.getloadavg())}),
    )
    print(f"sampled {len(prompts)} x {args.bon_samples} in {seconds} s -> {path}", flush=True)
    return candidates


def paired_gains(gains: dict[str, list[float]], seed: int = 0) -> dict:
    """DMoERM's best-of-N gold gain minus each other proxy's, paired over prompts (same samples), bootstrap 95% CI.
    A prompt with NaN gold has a NaN gain (``best_of_n_gain``): it is left out ("prompts" counts the pairs kept).

    Example:
        >>> from fidelity_bon import paired_gains
        >>> paired_gains({"DMoERM": [1.0, float("nan"), 0.5], "single RM": [0.0, 2.0, 0.5]})["DMoERM vs single RM"]
        {'difference': 0.5, 'bootstrap_95ci': [0.0, 1.0], 'prompts': 2}
    """
    paired = {}
    for name, other in gains.items():
        if name not in ("DMoERM", "gold (oracle)"):
            kept = [(a, b) for a, b in zip(gains["DMoERM"], other) if not (math.isnan(a) or math.isnan(b))]
            paired[f"DMoERM vs {name}"] = paired_mean_difference([a for a, _ in kept], [b for _, b in kept], seed=seed)
    return paired


def best_of_n(args, policy_path, proxies: dict, world, heldout_path, out: Path) -> dict:
    import torch

    from dmoerm_trl.rl import best_of_n_curves, best_of_n_gains, nan_gold_counts, plot_overoptimization
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
    curves = best_of_n_curves(result.records)
    gains = best_of_n_gains(result, args.bon_samples)
    paired = paired_gains(gains, seed=args.seed)
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
        **nan_gold_counts(result.gold_scores),  # "nan_gold" samples, "nan_gold_prompts" (their gains are NaN)
        "curves": curves,
        "fits": [fit.summary() for fit in fits],
        "gain_at_N_per_prompt": gains,
        "paired_gain_at_N": paired,
    }
