"""Writing an evaluation report: markdown tables, a bar chart, the JSON and the per-example JSON Lines file.

The report dict comes from :func:`dmoerm_trl.evaluation.evaluate_reward_models`; every accuracy in it carries a 95%
Wilson interval (``ci95``), shown in the tables as ``0.750 [0.301, 0.954]`` and in the chart as error bars.

Example:
    >>> from dmoerm_trl.evaluation_stats import summarize_pairs
    >>> report = {"data": "pairs.jsonl", "num_pairs": 2, "counts": {},
    ...           "model": summarize_pairs([1.0, 0.0], [0.0, 1.0], ["qa", "qa"])}
    >>> print(report_markdown(report).splitlines()[4])
    | qa | 2 | 0.500 [0.095, 0.905] |
    >>> paths = write_report(report, "runs/eval")  # eval_results.json/.md/.png, eval_examples.jsonl  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .evaluation_stats import INTERVAL_METHOD, NO_CATEGORY, OTHER_CATEGORIES, REWARDBENCH_SUBSET_MAPPING, SECTIONS

logger = logging.getLogger(__name__)


def _main_key(report: dict[str, Any]) -> str:
    return "dmoerm" if "dmoerm" in report else "model"


def _cell(entry: dict[str, Any] | None) -> str:
    """``0.750 [0.301, 0.954]`` (accuracy and its interval), ``-`` when there is none."""
    if not entry or entry.get("accuracy") is None:
        return "-"
    interval = entry.get("ci95")
    return f"{entry['accuracy']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def category_table_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, key)`` of the per-category rows in display order; ``key`` addresses :func:`_entry`.

    Example:
        >>> from dmoerm_trl.evaluation_stats import summarize_pairs
        >>> [label for label, _ in category_table_rows(summarize_pairs([1, 0], [0, 1], ["qa", ""]))]
        ['qa', '(no category)', 'overall, model categories', 'overall']
    """
    rows = [(category, f"per_category/{category}") for category in result.get("per_category", {})]
    if "other_categories" in result:
        rows.append((OTHER_CATEGORIES, "other_categories"))
    if "no_category" in result:
        rows.append((NO_CATEGORY, "no_category"))
    if "overall_model_categories" in result:
        rows.append(("overall, model categories", "overall_model_categories"))
    rows.append(("overall", "overall"))
    return rows


def _entry(result: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    node: Any = result
    for part in key.split("/", 1) if key.startswith("per_") else [key]:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _table(title: str, rows: list[tuple[str, str]], main: dict, baseline: dict | None, main_name: str) -> list[str]:
    lines = [
        title,
        "",
        f"| row | pairs | {main_name} |" + (" baseline |" if baseline else ""),
        "|---|---:|---:|" + ("---:|" if baseline else ""),
    ]
    for label, key in rows:
        ours = _entry(main, key) or {}
        shown = f"**{label}**" if label == "overall" else label
        line = f"| {shown} | {ours.get('total', 0)} | {_cell(ours)} |"
        if baseline:
            line += f" {_cell(_entry(baseline, key))} |"
        lines.append(line)
    return lines


def _input_counts_line(counts: dict[str, int]) -> list[str]:
    """One line on what did not enter the table as it was in the file: skipped records, pairs scored on their end."""
    parts = []
    if counts.get("skipped_records"):
        parts.append(f"{counts['skipped_records']} invalid record(s) skipped (--skip-invalid)")
    for key, value in sorted(counts.items()):
        if key.endswith("_truncated_left") and value:
            what = key.removesuffix("_truncated_left").replace("_", " ")
            parts.append(f"{value} {what} longer than the model accepts, scored on their end (oldest tokens dropped)")
    return ["", "Input: " + "; ".join(parts) + "."] if parts else []


def report_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: accuracy by category (model vs baseline), by routed category, RewardBench sections
    and subsets when the data has ``subset``, router and expert accuracy. Cells: accuracy [95% Wilson interval]."""
    main_key = _main_key(report)
    main, baseline = report[main_key], report.get("baseline")
    name = "DMoERM" if main_key == "dmoerm" else "model"
    where = report["data"] + (f", {report['split']} split" if report.get("split") else "")
    title = (
        f"## Pairwise accuracy on {where} ({report['num_pairs']} pairs; tied human ranks in the file, excluded: "
        f"{report['counts'].get('human_ties_excluded', 0)})"
    )
    lines = _table(title, category_table_rows(main), main, baseline, name)
    lines += [
        "",
        (
            f"Cells: accuracy [{INTERVAL_METHOD}]. A reward tie counts as wrong "
            f"({main['overall'].get('reward_ties', 0)} ties)."
        ),
    ]
    lines += _input_counts_line(report["counts"])
    if "other_categories" in main:
        labels = ", ".join(f"{label} ({count})" for label, count in main["other_categories"]["categories"].items())
        lines.append(
            f"{OTHER_CATEGORIES}: {main['other_categories']['total']} pairs labelled with categories this "
            f"DMoERM does not have ({labels}); the router sent them to its own categories and they count in "
            "the overall."
        )
    if "no_category" in main:
        lines.append(
            f"{NO_CATEGORY}: {main['no_category']['total']} pairs without a category label; they are routed "
            "and count in the overall."
        )
    if main.get("per_routed_category"):
        rows = [(category, f"per_routed_category/{category}") for category in main["per_routed_category"]]
        lines += [""] + _table(
            "## Pairwise accuracy by routed category (the DMoERM router's decision)",
            rows + [("overall", "overall")],
            main,
            baseline,
            name,
        )
    if main.get("per_subset"):
        section_of = {s: section for section, subsets in REWARDBENCH_SUBSET_MAPPING.items() for s in subsets}
        rows = sorted(main["per_subset"], key=lambda s: (SECTIONS.index(section_of[s]) if s in section_of else 9, s))
        lines += [""] + _table(
            "## Pairwise accuracy per subset", [(s, f"per_subset/{s}") for s in rows], main, baseline, name
        )
    if main.get("sections"):
        lines += [
            "",
            "## RewardBench sections",
            "",
            f"| section | pairs | {name} |" + (" baseline |" if baseline else ""),
            "|---|---:|---:|" + ("---:|" if baseline else ""),
        ]
        for section in [*SECTIONS, "Score"]:
            if section in main["sections"]:
                ours = main["sections"][section]
                line = f"| {'**Score**' if section == 'Score' else section} | {ours['total']} | {_cell(ours)} |"
                if baseline:
                    line += f" {_cell((baseline.get('sections') or {}).get(section))} |"
                lines.append(line)
        lines += [
            "",
            (
                "Sections weigh their subsets by RewardBench's EXAMPLE_COUNTS (math-prm up-weighted to the "
                "six HumanEvalPack subsets together); Score is the mean of the four sections."
            ),
        ]
        missing = {
            s: main["sections"][s]["missing_subsets"]
            for s in SECTIONS
            if main["sections"].get(s, {}).get("missing_subsets")
        }
        if missing:
            lines.append(
                "Subsets missing from the data (their sections are means of the subsets present): "
                + "; ".join(f"{s}: {', '.join(m)}" for s, m in missing.items())
                + "."
            )
        if main["sections"].get("unmapped_subsets"):
            lines.append("Subsets in no RewardBench section: " + ", ".join(main["sections"]["unmapped_subsets"]) + ".")
    comparison = report.get("comparison")
    if comparison:
        lines += [
            "",
            f"## {name} minus baseline on the same pairs (paired)",
            "",
            f"| row | pairs | only {name} right | only baseline right | difference [95% CI] | McNemar p |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, entry in [*comparison["per_category"].items(), ("overall", comparison["overall"])]:
            if entry["pairs"]:
                shown = "**overall**" if label == "overall" else label
                lines.append(
                    f"| {shown} | {entry['pairs']} | {entry['only_first_right']} | "
                    f"{entry['only_second_right']} | {entry['difference']:+.3f} [{entry['ci95'][0]:+.3f}, "
                    f"{entry['ci95'][1]:+.3f}] | {entry['mcnemar_p']:.3g} |"
                )
        lines += [
            "",
            (
                "Only the pairs where exactly one model is right tell them apart; interval: Agresti-Min "
                "for matched proportions; p: exact two-sided McNemar test."
            ),
        ]
    router = report.get("router") or {}
    if router.get("prompt"):
        lines += ["", "## Router accuracy", "", "| input | accuracy | sequences |", "|---|---:|---:|"]
        for view, label in (("prompt", "prompt only"), ("full", "prompt + response")):
            if router.get(view):
                lines.append(f"| {label} | {_cell(router[view])} | {router[view]['total']} |")
    if (report.get("experts") or {}).get("per_expert"):
        lines += [
            "",
            "## Expert accuracy on capability labels",
            "",
            "| category | capability | accuracy | labels |",
            "|---|---|---:|---:|",
        ]
        for category, caps in sorted(report["experts"]["per_expert"].items()):
            for capability, entry in caps.items():
                lines.append(f"| {category} | {capability} | {_cell(entry)} | {entry['total']} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ chart
def _bars(axis, labels: list[str], series: list[tuple[str, list[dict | None]]], title: str) -> None:
    """Grouped bars with 95% interval whiskers and the pair count above each bar."""
    width = 0.8 / len(series)
    positions = list(range(len(labels)))
    for index, (name, entries) in enumerate(series):
        offsets = [p + (index - (len(series) - 1) / 2) * width for p in positions]
        values = [(e or {}).get("accuracy") or 0.0 for e in entries]
        # max(0, .): at 0 correct the interval's lower end comes out 5.6e-17, and matplotlib refuses negative yerr
        low = [max(0.0, v - ((e or {}).get("ci95") or [v, v])[0]) for v, e in zip(values, entries)]
        high = [max(0.0, ((e or {}).get("ci95") or [v, v])[1] - v) for v, e in zip(values, entries)]
        axis.bar(offsets, values, width, yerr=[low, high], capsize=3, label=name, error_kw={"linewidth": 0.8})
        for x, value, up, entry in zip(offsets, values, high, entries):
            if entry and entry.get("total"):
                axis.text(x, value + up + 0.02, f"n={entry['total']}", ha="center", va="bottom", fontsize=7)
    axis.set_xticks(positions, labels, rotation=20, ha="right")
    axis.set_ylim(0, 1.18)
    axis.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axis.set_ylabel("pairwise accuracy")
    axis.set_title(title, fontsize=10)


def report_figure(report: dict[str, Any]):
    """The report's bar chart as a ``matplotlib.figure.Figure`` with its own Agg canvas (pyplot and the global
    backend are untouched): pairwise accuracy (model vs baseline) per category row and overall (per routed category
    when the data has no categories), and per RewardBench section when the data has subsets; 95% interval whiskers,
    the pair count above each bar, the legend in the right margin, outside the axes.

    Example:
        >>> from dmoerm_trl.evaluation_stats import summarize_pairs
        >>> figure = report_figure({"model": summarize_pairs([1.0, 0.0], [0.0, 1.0], ["qa", "qa"])})
        >>> sorted(text.get_text() for text in figure.axes[0].texts)  # the qa row and the overall
        ['n=2', 'n=2']
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    main_key = _main_key(report)
    main, baseline = report[main_key], report.get("baseline")
    names = [("DMoERM" if main_key == "dmoerm" else "model", main)] + ([("baseline RM", baseline)] if baseline else [])
    if main.get("per_category") or "per_routed_category" not in main:
        rows, panel_title = category_table_rows(main), "By labelled category"
    else:  # no category labels: the router's categories are the informative rows
        rows = [(c, f"per_routed_category/{c}") for c in main["per_routed_category"]] + [("overall", "overall")]
        panel_title = "By routed category (data without categories)"
    panels = [
        (
            panel_title,
            [label for label, _ in rows],
            [(name, [_entry(result, key) for _, key in rows]) for name, result in names],
        )
    ]
    if main.get("sections"):
        sections = [s for s in [*SECTIONS, "Score"] if s in main["sections"]]
        panels.append(
            (
                "RewardBench sections",
                sections,
                [(name, [(result.get("sections") or {}).get(s) for s in sections]) for name, result in names],
            )
        )
    widths = [max(2.5, 0.45 * len(labels) * (len(names) + 1) + 0.8) for _, labels, _ in panels]
    figure = Figure(figsize=(sum(widths) + 2.0, 4.2))
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(1, len(panels), width_ratios=widths)
    for index, (title, labels, series) in enumerate(panels):
        _bars(figure.add_subplot(grid[0, index]), labels, series, title)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.suptitle("Agreement with human preferences (bars: 95% Wilson intervals; n = pairs)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1 - 1.8 / (sum(widths) + 2.0), 1))
    figure.legend(handles, labels, loc="center right", frameon=False)  # in the right margin, never over a bar
    return figure


def plot_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Save :func:`report_figure` as a PNG atomically (no pyplot, no change of matplotlib's backend).

    Example:
        >>> from dmoerm_trl.evaluation_stats import summarize_pairs
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "chart.png")
        >>> plot_report({"model": summarize_pairs([1.0], [0.0], ["qa"])}, path); os.path.getsize(path) > 1000
        True
    """
    from .utils.io import atomic_path

    figure = report_figure(report)
    with atomic_path(path, suffix=".tmp.png") as tmp:
        figure.savefig(tmp, dpi=120, format="png")


# ------------------------------------------------------------------------------------------------------ files
def write_report(report: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``eval_results.json`` (the report without its examples), ``eval_results.md``, ``eval_results.png`` and
    ``eval_examples.jsonl`` (one row per pair, joinable by ``id``/``pair_id``), each atomically; return their paths.

    Example:
        >>> import tempfile
        >>> from dmoerm_trl.evaluation_stats import summarize_pairs
        >>> report = {"data": "d.jsonl", "num_pairs": 1, "counts": {}, "examples": [{"id": 1, "correct": True}],
        ...           "model": summarize_pairs([1.0], [0.0], ["qa"])}
        >>> sorted(write_report(report, tempfile.mkdtemp()))
        ['examples', 'json', 'markdown', 'png']
    """
    from .utils.io import atomic_write_json, atomic_write_jsonl, atomic_write_text

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": output_dir / "eval_results.json",
        "markdown": output_dir / "eval_results.md",
        "png": output_dir / "eval_results.png",
        "examples": output_dir / "eval_examples.jsonl",
    }
    examples = report.get("examples")
    summary = {key: value for key, value in report.items() if key != "examples"}
    if examples is not None:
        summary["examples_file"] = paths["examples"].name
        atomic_write_jsonl(paths["examples"], examples)
    else:
        paths.pop("examples")
    atomic_write_json(paths["json"], summary)
    atomic_write_text(paths["markdown"], report_markdown(summary))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'dmoerm-trl[plots]'): no PNG chart written")
        paths.pop("png")
    else:
        plot_report(summary, paths["png"])
    return {key: str(value) for key, value in paths.items()}
