"""The demo's report: ``report.md`` (tables, charts), ``metrics.json``, ``accuracy.png``.

Example:
    >>> from dmoerm_trl.demo.report import headline  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.io import atomic_path, atomic_write_json, atomic_write_text
from . import FAST_NOTE


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def headline(metrics: dict) -> dict:
    gold = metrics["evaluation"]["gold_test"]
    human = metrics["evaluation"]["human_validation"]
    bon = metrics["best_of_n"]["summary"]
    return {
        "dmoerm_gold_accuracy": gold["dmoerm"]["overall"],
        "baseline_gold_accuracy": gold["baseline"]["overall"],
        "dmoerm_human_accuracy": human["dmoerm"]["overall"],
        "baseline_human_accuracy": human["baseline"]["overall"],
        "router_accuracy_prompt": gold.get("router_accuracy_prompt"),
        "human_labels_gold_agreement": metrics["data"]["human_gold_agreement"],
        "bon_gold_gain_dmoerm": bon.get("DMoERM", {}).get("gold_gain"),
        "bon_gold_gain_single_rm": bon.get("single RM", {}).get("gold_gain"),
        "bon_gold_gain_oracle": bon.get("gold (oracle)", {}).get("gold_gain"),
        "bon_gold_gain_sem_dmoerm": bon.get("DMoERM", {}).get("gold_gain_sem"),
        "bon_gold_gain_sem_single_rm": bon.get("single RM", {}).get("gold_gain_sem"),
        "dmoerm_gold_ci95": gold["dmoerm"].get("ci95"),
        "baseline_gold_ci95": gold["baseline"].get("ci95"),
        "policy_sample_misrouting_rate": (metrics["best_of_n"].get("policy_sample_routing") or {}).get(
            "misrouting_rate"
        ),
        "wall_seconds": metrics["wall_seconds"],
    }


def plot_accuracy(metrics: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: the global backend is left alone
    from matplotlib.figure import Figure

    gold = metrics["evaluation"]["gold_test"]
    categories = sorted(gold["dmoerm"]["per_category"])
    groups = ["overall", *categories]
    figure = Figure(figsize=(max(6, 1.6 * len(groups) + 2), 4.2))
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    width = 0.38
    for offset, (name, label) in zip((-width / 2, width / 2), (("dmoerm", "DMoERM"), ("baseline", "single RM"))):
        values = [gold[name]["overall"]] + [gold[name]["per_category"].get(c) for c in categories]
        xs = [i + offset for i in range(len(groups))]
        bars = axis.bar(xs, [v or 0 for v in values], width, label=label)
        for bar, value in zip(bars, values):
            if value is not None:
                axis.text(
                    bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"{value:.2f}", ha="center", fontsize=8
                )
    ceiling = metrics["data"]["human_gold_agreement"]
    axis.axhline(ceiling, color="gray", linestyle=":", label=f"human labels vs gold ({ceiling:.2f})")
    axis.axhline(0.5, color="black", linewidth=0.6)
    axis.set_xticks(range(len(groups)), groups, rotation=15)
    axis.set_ylim(0, 1.08)
    axis.set_ylabel("pairwise accuracy vs gold")
    axis.set_title("Agreement with the gold preference on the clean held-out test split")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        figure.savefig(tmp, dpi=120)


def _ci(value, interval) -> str:
    """``61.7% [55.6, 67.5]``: an accuracy with its 95% Wilson interval."""
    if value is None:
        return "-"
    if not interval:
        return _pct(value)
    return f"{_pct(value)} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def learning_verdict(metrics: dict) -> dict:
    """Whether each reward model clearly learned (docs/demo.md, "Sizes"): its gold accuracy's 95% interval above
    50%, and the validation loss of the single RM and of DMoERM's task adapters against ln 2.

    Example:
        >>> from dmoerm_trl.demo.report import learning_verdict  # doctest: +SKIP
        >>> learning_verdict(metrics)["baseline"]["gold_ci95_above_half"]  # doctest: +SKIP
    """
    import math

    gold = metrics["evaluation"]["gold_test"]
    stages = metrics["training"]["stages"]
    verdict = {}
    for name in ("dmoerm", "baseline"):
        interval = gold[name].get("ci95")
        verdict[name] = {"gold_ci95_above_half": None if not interval else bool(interval[0] > 0.5)}
    task_losses = [v["eval_loss"] for k, v in stages.items() if k.startswith("task/") and v.get("eval_loss")]
    verdict["baseline"]["validation_loss"] = (stages.get("baseline") or {}).get("eval_loss")
    verdict["dmoerm"]["task_validation_loss_mean"] = (
        round(sum(task_losses) / len(task_losses), 4) if task_losses else None
    )
    verdict["ln2"] = round(math.log(2), 4)
    return verdict


def _pm(value, sem) -> str:
    return _num(value) if sem is None else f"{_num(value)} ± {sem:.2f}"


def _routing_rows(routing: dict | None) -> list[str]:
    """The policy samples' routing and DMoERM's (calibrated) rewards on them, per category."""
    if not routing:
        return []
    scale = (
        "calibrated: each category's reward standardised on its training texts"
        if routing["calibrated"]
        else "raw aggregator outputs (calibration off)"
    )
    rows = [
        "### Routing and reward scale on the policy's samples",
        "",
        (
            f"DMoERM routed **{_pct(routing['misrouting_rate'])}** of the policy's {routing['samples']} samples "
            f"({routing['misrouted']}) to a category other than their prompt's. Rewards are {scale}; the "
            "calibration columns are the raw mean and standard deviation on the category's training texts."
        ),
        "",
        "| category | samples | misrouted | DMoERM reward on samples, mean ± sd | calibration mean / sd |",
        "|---|---|---|---|---|",
    ]
    for category, info in routing["per_category"].items():
        reward = "-" if info["reward_mean"] is None else f"{info['reward_mean']:+.2f} ± {info['reward_std'] or 0:.2f}"
        rows.append(
            f"| {category} | {info['samples']} | {info['misrouted']} | {reward} | "
            f"{info['calibration_mean']:+.2f} / {info['calibration_std']:.2f} |"
        )
    return rows + [""]


def _accuracy_rows(table: dict) -> list[str]:
    categories = sorted(set(table["dmoerm"]["per_category"]) | set(table["baseline"]["per_category"]))
    rows = ["| | overall | " + " | ".join(categories) + " |", "|---|---|" + "---|" * len(categories)]
    for name, label in (("dmoerm", "**DMoERM**"), ("baseline", "single RM (same backbone, same data)")):
        intervals = table[name].get("per_category_ci95") or {}
        cells = [_ci(table[name]["per_category"].get(c), intervals.get(c)) for c in categories]
        rows.append(
            f"| {label} | {_ci(table[name]['overall'], table[name].get('ci95'))} | " + " | ".join(cells) + " |"
        )
    return rows + ["", "Accuracies with their 95% Wilson interval in brackets."]


def _learning_line(metrics: dict) -> str:
    verdict = metrics.get("learning") or learning_verdict(metrics)
    base, dmoerm = verdict["baseline"], verdict["dmoerm"]

    def loss(value):
        return "-" if value is None else f"{value:.3f}"

    def learned(ok):
        return "unknown" if ok is None else "above 50%" if ok else "**not** above 50%"

    return (
        f"- **Did they learn?** DMoERM's gold interval is {learned(dmoerm['gold_ci95_above_half'])}, the single "
        f"RM's {learned(base['gold_ci95_above_half'])}; validation loss (ln 2 = {verdict['ln2']:.3f}): single RM "
        f"{loss(base['validation_loss'])}, DMoERM's task adapters {loss(dmoerm['task_validation_loss_mean'])} "
        "(mean over categories)."
    )


def _scope_sentence(metrics: dict) -> str:
    bon = metrics["best_of_n"]
    return (
        f"What this run shows: the whole pipeline working on a world with a known gold reward, and how far "
        f"{metrics['data']['train_pairs']} noisy pairs and a {metrics['sizes']['reward_layers']}-layer backbone "
        f"take each reward model; what it does not show: a benchmark of DMoERM against a single RM (one seed, "
        f"{bon['prompts']} best-of-n prompts, a tiny backbone: differences inside the intervals are not "
        "separated; `benchmarks/fidelity.py` and docs/benchmarks.md have the multi-seed comparison)."
    )


def render_markdown(metrics: dict) -> str:
    head, sizes, data = metrics["headline"], metrics["sizes"], metrics["data"]
    gold, human = metrics["evaluation"]["gold_test"], metrics["evaluation"]["human_validation"]
    bon = metrics["best_of_n"]
    mode = "--fast" if metrics["config"]["fast"] else "full"
    lines = [
        "# DMoERM demo report",
        "",
        (
            f"`dmoerm demo` ({mode}), seed {metrics['config']['seed']}, {metrics['wall_seconds'] / 60:.1f} min on "
            f"{metrics['machine']['cpus']} CPU cores (load average at start "
            f"{metrics['machine']['load_average_at_start'][0]:.1f}, at the end "
            f"{metrics['machine'].get('load_average_at_end', [float('nan')])[0]:.1f}; CPU time "
            f"{metrics.get('cpu_seconds', float('nan')) / 60:.1f} min, {metrics['machine']['torch_threads']} torch "
            "thread(s))."
            + (f" {FAST_NOTE}" if metrics["config"]["fast"] else "")
            + (
                " The policy samples were reused from `bon_samples.json` (not drawn in this run)."
                if metrics.get("best_of_n", {}).get("sampling_seconds", 0) is None
                else ""
            )
        ),
        "",
        "## Headline",
        "",
        (
            f"- **Pairwise accuracy against the gold preference** (clean held-out test split, "
            f"{gold['dmoerm']['pairs']} pairs, 95% Wilson interval): DMoERM "
            f"**{_ci(head['dmoerm_gold_accuracy'], gold['dmoerm'].get('ci95'))}**, single RM "
            f"{_ci(head['baseline_gold_accuracy'], gold['baseline'].get('ci95'))}. The human labels the models were "
            f"trained on agree with the gold on {_pct(head['human_labels_gold_agreement'])} of pairs."
        ),
        (
            f"- **Against the (noisy) human ranks** (held-out validation, {human['dmoerm']['pairs']} pairs): DMoERM "
            f"{_ci(head['dmoerm_human_accuracy'], human['dmoerm'].get('ci95'))}, single RM "
            f"{_ci(head['baseline_human_accuracy'], human['baseline'].get('ci95'))}."
        ),
        _learning_line(metrics),
        (
            f"- **Router**: {_pct(head['router_accuracy_prompt'])} of test conversations routed to the right category "
            f"from the prompt alone."
        ),
        (
            f"- **Best-of-{bon['samples_per_prompt']} with {Path(metrics['models']['policy']).name}** ({bon['prompts']} prompts): gold reward gain over a "
            f"single sample (± one standard error over prompts): DMoERM as the proxy "
            f"{_pm(head['bon_gold_gain_dmoerm'], head.get('bon_gold_gain_sem_dmoerm'))}, single RM "
            f"{_pm(head['bon_gold_gain_single_rm'], head.get('bon_gold_gain_sem_single_rm'))}, the gold itself (ceiling) "
            f"{_num(head['bon_gold_gain_oracle'])}."
        ),
        (
            f"- **Routing of the policy's samples**: {_pct(head.get('policy_sample_misrouting_rate'))} of the best-of-n "
            "samples routed to a category other than their prompt's."
        ),
        "",
        _scope_sentence(metrics),
        "",
        "## What ran",
        "",
        (
            f"1. **Models**: policy `{Path(metrics['models']['policy']).name}`, reward backbone "
            f"`{Path(metrics['models']['reward_backbone']).name}` (LoRA r={sizes['lora_r']}, max_length "
            f"{sizes['max_length']})."
        ),
        (
            f"2. **Data**: the synthetic world ({', '.join(data['categories'])}): {data['train_pairs']} training pairs "
            f'with "human" ranks (the gold flipped at ~30%), {data["test_pairs"]} clean gold test pairs on held-out '
            "prompts."
        ),
        (
            f"3. **Capability labels**: the `openai` client against the synthetic judge on 127.0.0.1 (10% noisy "
            f"verdicts, asked in both orders): {metrics['labels']['calls']} calls, {metrics['labels']['cache_hits']} "
            f"cache hits, {metrics['labels']['labels_kept']} consistent labels (at most "
            f"{sizes['max_labels_per_capability']} per expert used)."
        ),
        (
            "4. **Training** (TRL trainers, `dmoerm_trl.trainers`): router, then per category the task adapter (phase 1), "
            "one LoRA expert per capability (phase 2), the aggregator MLP (phase 3); and one single RM (LoRA + head) on "
            "all the human pairs."
        ),
        "5. **Best-of-n**: SmolLM2-135M-Instruct samples answers to held-out prompts; each proxy picks the best.",
        "",
        "## Pairwise accuracy",
        "",
        "![accuracy](accuracy.png)",
        "",
        "Against the gold (clean test split):",
        "",
        *_accuracy_rows(gold),
        "",
        "Against the human ranks (held-out validation split of the training data; the ranks are noisy):",
        "",
        *_accuracy_rows(human),
        "",
        "### Capability labels and experts",
        "",
        "| expert | labels used | judge consistency (swap filter) | label agrees with human rank |",
        "|---|---|---|---|",
    ]
    for name, used in metrics["labels"]["labels_used_per_expert"].items():
        info = metrics["labels"]["per_capability"].get(name, {})
        lines.append(
            f"| {name} | {used} | {_pct(info.get('consistency_rate'))} | {_pct(info.get('human_agreement_rate'))} |"
        )
    lines += [
        "",
        "## Best-of-n against the gold reward",
        "",
        "![overoptimization](overoptimization.png)",
        "",
        (
            "Expected gold reward of the answer each proxy picks among n samples (unbiased estimate from N samples "
            "per prompt; ± one standard error over prompts):"
        ),
        "",
        "| proxy | " + " | ".join(f"n={n}" for n in sorted(next(iter(bon["curves"].values())))) + " |",
        "|---|" + "---|" * len(next(iter(bon["curves"].values()))),
    ]
    for name, curve in bon["curves"].items():
        cells = [f"{curve[n]['gold']:.2f} ± {curve[n]['gold_sem']:.2f}" for n in sorted(curve)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "sqrt(KL) of best-of-n from the policy: "
        + ", ".join(f"n={n}: {v['sqrt_kl']:.2f}" for n, v in sorted(next(iter(bon["curves"].values())).items()))
        + ".",
        "",
    ]
    lines += _routing_rows(bon.get("policy_sample_routing"))
    if bon["examples"]:
        lines += ["### What the proxies picked", ""]
        for example in bon["examples"]:
            lines.append(
                f"**{example['category']}**: _{example['prompt']}_ (mean gold of the samples "
                f"{example['gold_mean_of_samples']:.2f})"
            )
            lines.append("")
            for name, pick in example["picked"].items():
                text = " ".join(pick["text"].split())[:220]
                lines.append(f'- {name} (gold {pick["gold"]:.2f}): "{text}"')
            lines.append("")
    lines += [
        "## Training stages",
        "",
        (
            "Validation loss of a pairwise stage against ln 2 = 0.693 (the loss of a "
            "model that has learned nothing); the validation splits are small (a few pairs per category)."
        ),
        "",
        "| stage | status | seconds | validation accuracy | validation loss |",
        "|---|---|---|---|---|",
    ]
    for name, stage in metrics["training"]["stages"].items():
        accuracy, loss = stage.get("eval_accuracy"), stage.get("eval_loss")
        lines.append(
            f"| {name} | {stage['status']} | {stage.get('seconds') or '-'} | "
            f"{'-' if accuracy is None else f'{accuracy:.3f}'} | {'-' if loss is None else f'{loss:.3f}'} |"
        )
    lines += ["", "## Time", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in metrics["stage_seconds"].items()]
    lines += ["", "## Gold formulas of the synthetic world", ""]
    lines += [f"- **{name}**: `{formula}`" for name, formula in data["gold_formulas"].items()]
    lines += [
        "",
        "## Files",
        "",
        "- `metrics.json`: every number above",
        ("- `eval_gold/`, `eval_human/`: the evaluation reports (`dmoerm eval` format)"),
        ("- `best_of_n.csv`: the best-of-n curves (`dmoerm overopt best_of_n.csv` refits them)"),
        ("- `dmoerm/`: the trained DMoERM (`dmoerm info`), `dmoerm/baseline/`: the single RM"),
        "- `data/`, `labels/`: the generated data and the capability labels",
        "",
    ]
    return "\n".join(lines)


def write_report(metrics: dict, out: Path) -> dict[str, str]:
    paths = {
        "report": out / "report.md",
        "metrics": out / "metrics.json",
        "accuracy_png": out / "accuracy.png",
        "overoptimization_png": out / "overoptimization.png",
    }
    plot_accuracy(metrics, paths["accuracy_png"])
    atomic_write_json(paths["metrics"], json.loads(json.dumps(metrics, default=str)))
    atomic_write_text(paths["report"], render_markdown(metrics))
    return {k: str(v) for k, v in paths.items()}
