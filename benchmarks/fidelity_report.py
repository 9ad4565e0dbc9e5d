"""Statistics and the report of ``benchmarks/fidelity.py``: standard errors, paired tests, the seed summary, the markdown
table, the plot.

Example:
    >>> from fidelity_report import paired_comparison  # doctest: +SKIP
    >>> paired_comparison([1, 1, 0, 1], [1, 0, 0, 0])["mcnemar_p"]  # doctest: +SKIP
    0.5
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path


def stderr(p, n) -> float | None:
    return None if p is None or not n else round((p * (1 - p) / n) ** 0.5, 4)


def paired_comparison(a: list[int], b: list[int], resamples: int = 10000, seed: int = 0) -> dict:
    """A vs B on the same pairs: accuracy difference, exact McNemar p-value (two-sided) and a paired-bootstrap 95%
    interval of the difference."""
    import math
    import random

    n = len(a)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    k, m = min(only_a, only_b), only_a + only_b
    p_value = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    rng = random.Random(seed)
    diffs = sorted(sum(a[j] - b[j] for j in (rng.randrange(n) for _ in range(n))) / n for _ in range(resamples))
    return {
        "difference": round((sum(a) - sum(b)) / n, 4),
        "only_first_right": only_a,
        "only_second_right": only_b,
        "mcnemar_p": round(p_value, 5),
        "bootstrap_95ci": [round(diffs[int(0.025 * resamples)], 4), round(diffs[int(0.975 * resamples) - 1], 4)],
        "bootstrap_p_not_better": round(sum(d <= 0 for d in diffs) / resamples, 5),
        "pairs": n,
    }


def significance(per_pair: dict) -> dict:
    """DMoERM against every other method on the same test pairs, overall and per category (``per_pair`` =
    ``per_pair_correct.json``: ``{"categories": [...], "correct": {method: [0/1 per pair]}}``)."""
    correct, categories = per_pair["correct"], per_pair["categories"]
    result = {}
    for other in correct:
        if other == "DMoERM":
            continue
        entry = paired_comparison(correct["DMoERM"], correct[other])
        entry["per_category"] = {}
        for category in sorted(set(categories)):
            rows = [i for i, c in enumerate(categories) if c == category]
            entry["per_category"][category] = paired_comparison(
                [correct["DMoERM"][i] for i in rows], [correct[other][i] for i in rows], resamples=2000
            )
        result[f"DMoERM vs {other}"] = entry
    return result


def paired_mean_difference(a: list[float], b: list[float], resamples: int = 10000, seed: int = 0) -> dict:
    import random

    diffs = [x - y for x, y in zip(a, b)]
    n, rng = len(diffs), random.Random(seed)
    if n == 0:  # e.g. every prompt's gold is NaN: no pair to compare
        return {"difference": float("nan"), "bootstrap_95ci": [float("nan"), float("nan")], "prompts": 0}
    boot = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {
        "difference": round(sum(diffs) / n, 4),
        "bootstrap_95ci": [round(boot[int(0.025 * resamples)], 4), round(boot[int(0.975 * resamples) - 1], 4)],
        "prompts": n,
    }


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(results: dict) -> str:
    accuracy, categories = results["accuracy"], results["categories"]
    first = next(iter(accuracy.values()))
    counts = first.get("per_category_pairs") or {}
    lines = [
        "| method | "
        + " | ".join(f"{c} ({counts.get(c, '?')})" for c in categories)
        + f" | overall ({first['pairs']}) |",
        "|---" * (len(categories) + 2) + "|",
    ]
    for name, entry in accuracy.items():
        errors = entry.get("per_category_stderr") or {}
        cells = [
            _pct(entry["per_category"].get(c)) + (f" ± {_pct(errors[c])}" if errors.get(c) is not None else "")
            for c in categories
        ]
        overall = _pct(entry["overall"]) + (f" ± {_pct(entry['stderr'])}" if entry.get("stderr") is not None else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{overall}** |")
    router = results.get("router") or {}
    lines.append("")
    lines.append(
        f"Pairwise accuracy (%) against the gold on {first['pairs']} clean test pairs (± one standard "
        f"error). DMoERM router accuracy: {_pct(router.get('prompt'))}% (prompt only), "
        f"{_pct(router.get('full'))}% (prompt + response). Human labels agree with the gold on "
        f"{_pct(results['data']['human_gold_agreement'])}% of training pairs."
    )
    if len(results.get("router_per_seed") or {}) > 1:
        lines.append("")
        lines.append(
            "Router accuracy on the test prompts per training seed (%, prompt only): "
            + "; ".join(
                f"{name}: {_pct(entry.get('prompt'))} ("
                + ", ".join(f"{c} {_pct(v)}" for c, v in (entry.get("per_category_prompt") or {}).items())
                + ")"
                for name, entry in results["router_per_seed"].items()
            )
        )
    if results.get("significance"):
        lines += [
            "",
            (
                "| DMoERM vs | difference (points) | only DMoERM right / only other right | McNemar p "
                "(exact, two-sided) | paired bootstrap 95% CI |"
            ),
            "|---|---|---|---|---|",
        ]
        for name, test in results["significance"].items():
            low, high = test["bootstrap_95ci"]
            lines.append(
                f"| {name.removeprefix('DMoERM vs ')} | {100 * test['difference']:+.1f} | "
                f"{test['only_first_right']} / {test['only_second_right']} | {test['mcnemar_p']:.3g} | "
                f"[{100 * low:+.1f}, {100 * high:+.1f}] |"
            )
    bon = results.get("best_of_n")
    if bon:
        lines += [
            "",
            (
                f"Best-of-n ({bon['prompts']} held-out prompts x N={bon['samples_per_prompt']}): gold reward "
                "of the proxy's pick"
            ),
            "",
            "| proxy | " + " | ".join(f"n={n}" for n in sorted(next(iter(bon["curves"].values())))) + " | gain |",
            "|---" * (len(next(iter(bon["curves"].values()))) + 2) + "|",
        ]
        per_prompt = bon.get("gain_at_N_per_prompt") or {}
        for name, curve in bon["curves"].items():
            ns = sorted(curve)
            gains = [g for g in per_prompt.get(name, []) if not math.isnan(g)]
            sem = f" ± {statistics.stdev(gains) / math.sqrt(len(gains)):.3f}" if len(gains) > 1 else ""
            lines.append(
                f"| {name} | "
                + " | ".join(f"{curve[n]['gold']:.3f}" for n in ns)
                + f" | {curve[ns[-1]]['gold'] - curve[ns[0]]['gold']:+.3f}{sem} |"
            )
        lines += [
            "",
            f"Standard error of a point over prompts: ~{max(c[max(c)]['gold_sem'] for c in bon['curves'].values()):.2f}. "
            "DMoERM's gold gain at n=N minus another proxy's, paired over prompts (bootstrap 95% CI): "
            + "; ".join(
                f"{k.removeprefix('DMoERM vs ')} {v['difference']:+.3f} [{v['bootstrap_95ci'][0]:+.3f}, "
                f"{v['bootstrap_95ci'][1]:+.3f}]"
                for k, v in bon.get("paired_gain_at_N", {}).items()
            ),
        ]
        if bon.get("policy_sample_misrouting"):
            lines += [
                "",
                "Policy samples routed to another category than their prompt's: "
                + "; ".join(
                    f"{name} {100 * v['rate']:.1f}% ({v['misrouted']}/{v['samples']})"
                    for name, v in bon["policy_sample_misrouting"].items()
                )
                + ".",
            ]
    share = (bon or {}).get("wco_minimum_is_lowest_offset_member")
    if share:
        lines += [
            "",
            (
                f"WCO's minimum comes from the member with the lowest mean reward on the policy samples on "
                f"{100 * share['raw']:.1f}% of them with raw members, {100 * share['standardized']:.1f}% with "
                "members standardised on reference texts."
            ),
        ]
    if results.get("seeds"):
        lines += [
            "",
            (
                "Over training seeds (each seed: its own data split and initialisation; mean ± standard deviation "
                "over seeds):"
            ),
            "",
            "| method | runs | accuracy vs gold | best-of-N gold gain |",
            "|---|---|---|---|",
        ]
        for method, entry in results["seeds"].items():
            sd = entry.get("accuracy_sd_over_seeds") or 0.0
            gain = (
                (
                    f"{entry['bon_gain_mean']:+.3f} ± {entry.get('bon_gain_sd_over_seeds') or 0.0:.3f} ("
                    + ", ".join(f"{g:+.3f}" for g in entry["bon_gain"])
                    + ")"
                )
                if "bon_gain" in entry
                else "-"
            )
            lines.append(
                f"| {method} | {len(entry['runs'])} | {100 * entry['accuracy_mean']:.1f} ± {100 * sd:.1f} ("
                + ", ".join(f"{100 * a:.1f}" for a in entry["accuracy"])
                + f") | {gain} |"
            )
    return "\n".join(lines)


def plot_accuracy(results: dict, path: Path) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: the global backend is left alone
        from matplotlib.figure import Figure
    except ImportError:
        return
    names = list(results["accuracy"])
    groups = results["categories"] + ["overall"]
    fig = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        entry = results["accuracy"][name]
        values = [entry["per_category"].get(c) or 0.0 for c in results["categories"]] + [entry["overall"] or 0.0]
        ax.bar([g + k * width for g in range(len(groups))], values, width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
    ax.axhline(results["data"]["human_gold_agreement"], color="grey", linestyle="--", label="human labels vs gold")
    ax.set_ylim(0, 1)
    ax.set_ylabel("pairwise accuracy vs gold (clean test)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def seed_summary(results: dict) -> dict:
    """Mean and standard deviation over training seeds of DMoERM's and the single RM's accuracy and best-of-N gain."""
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
