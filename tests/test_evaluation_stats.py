"""Evaluation arithmetic and reporting without models: Wilson intervals, RewardBench sections (checked against hand
computations), category/routed/subset rows that add up to the overall, the markdown tables and the bar chart."""

from __future__ import annotations

import math

import pytest

from dmoerm_trl.evaluation_report import report_figure, report_markdown
from dmoerm_trl.evaluation_stats import (
    NO_CATEGORY,
    OTHER_CATEGORIES,
    REWARDBENCH_EXAMPLE_COUNTS,
    REWARDBENCH_SUBSET_MAPPING,
    rewardbench_sections,
    summarize_pairs,
    weighted_accuracy,
    wilson_interval,
)


@pytest.mark.parametrize(
    "correct, total, low, high",
    [  # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_published_values(correct, total, low, high):
    interval = wilson_interval(correct, total)
    assert interval == pytest.approx((low, high), abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_rewardbench_constants_are_consistent():
    mapped = [s for subsets in REWARDBENCH_SUBSET_MAPPING.values() for s in subsets]
    assert len(mapped) == len(set(mapped)) == len(REWARDBENCH_EXAMPLE_COUNTS) == 23
    assert set(mapped) == set(REWARDBENCH_EXAMPLE_COUNTS)
    hep = [s for s in REWARDBENCH_SUBSET_MAPPING["Reasoning"] if s.startswith("hep-")]
    assert REWARDBENCH_EXAMPLE_COUNTS["math-prm"] == sum(REWARDBENCH_EXAMPLE_COUNTS[s] for s in hep) == 984


def subset(correct, total):
    return {"correct": correct, "total": total}


def test_sections_against_a_hand_computation():
    per_subset = {
        "alpacaeval-easy": subset(1, 1),
        "mt-bench-med": subset(0, 2),  # Chat
        "mt-bench-hard": subset(0, 1),  # Chat Hard
        "donotanswer": subset(1, 2),  # Safety
        "math-prm": subset(1, 2),
        "hep-go": subset(2, 2),
        "hep-cpp": subset(0, 1),  # Reasoning
        "my-own-subset": subset(3, 3),  # in no section
    }
    sections = rewardbench_sections(per_subset)
    # Chat: (100 * 1 + 40 * 0) / 140; Reasoning: (984 * 0.5 + 164 * 1 + 164 * 0) / 1312 = 656 / 1312
    assert sections["Chat"]["accuracy"] == pytest.approx(100 / 140)
    assert sections["Chat Hard"]["accuracy"] == 0.0
    assert sections["Safety"]["accuracy"] == 0.5
    assert sections["Reasoning"]["accuracy"] == pytest.approx(0.5)
    assert sections["Reasoning"]["total"] == 5
    assert sections["Score"]["accuracy"] == pytest.approx((100 / 140 + 0 + 0.5 + 0.5) / 4)
    # Kish effective size of the Reasoning mean: weights 0.75, 0.125, 0.125 on 2, 2 and 1 pairs
    n_eff = 1 / (0.75**2 / 2 + 0.125**2 / 2 + 0.125**2 / 1)
    assert sections["Reasoning"]["effective_pairs"] == pytest.approx(n_eff)
    assert sections["Reasoning"]["ci95"] == pytest.approx(wilson_interval(0.5 * n_eff, n_eff))
    assert (
        "math-prm" not in sections["Reasoning"]["missing_subsets"]
        and "hep-js" in sections["Reasoning"]["missing_subsets"]
    )
    assert sections["unmapped_subsets"] == ["my-own-subset"]
    for name in ("Chat", "Chat Hard", "Safety", "Reasoning", "Score"):
        low, high = sections[name]["ci95"]
        assert low <= sections[name]["accuracy"] <= high and high - low > 0.1  # small samples: wide, not degenerate

    partial = rewardbench_sections({"alpacaeval-easy": subset(1, 1)})
    assert set(partial) == {"Chat"}  # no Score without all four sections
    assert rewardbench_sections({"my-own-subset": subset(1, 1)}) == {}


def test_weighted_accuracy_with_count_weights_is_the_pooled_wilson_interval():
    rows = {"a": subset(3, 7), "b": subset(9, 11)}
    entry = weighted_accuracy(rows, {"a": 7, "b": 11})
    assert entry["accuracy"] == pytest.approx(12 / 18)
    assert entry["effective_pairs"] == pytest.approx(18)
    assert entry["ci95"] == pytest.approx(wilson_interval(12, 18))


def test_summarize_pairs_rows_add_up_and_unknown_categories_get_their_own_row():
    chosen = [2.0, 0.0, 1.0, 3.0, 1.0, 5.0]
    rejected = [1.0, 1.0, 0.0, 3.0, 0.0, 4.0]
    categories = ["qa", "qa", "poetry", "poetry", "", "chat"]
    subsets = ["hep-go", "hep-go", "x", "", "math-prm", "math-prm"]
    routed = ["qa", "chat", "qa", "qa", "chat", "chat"]
    result = summarize_pairs(
        chosen, rejected, categories, subsets=subsets, routed=routed, model_categories=["qa", "chat"]
    )
    assert (
        result["overall"]["correct"] == 4 and result["overall"]["total"] == 6 and result["overall"]["reward_ties"] == 1
    )
    assert set(result["per_category"]) == {"qa", "chat"}
    assert result["other_categories"]["categories"] == {"poetry": 2}
    assert (result["other_categories"]["correct"], result["other_categories"]["total"]) == (1, 2)
    assert (result["no_category"]["correct"], result["no_category"]["total"]) == (1, 1)
    rows = [*result["per_category"].values(), result["other_categories"], result["no_category"]]
    assert sum(r["total"] for r in rows) == 6 and sum(r["correct"] for r in rows) == 4
    assert (result["overall_model_categories"]["correct"], result["overall_model_categories"]["total"]) == (2, 3)
    assert {k: (v["correct"], v["total"]) for k, v in result["per_routed_category"].items()} == {
        "qa": (2, 3),
        "chat": (2, 3),
    }
    assert {k: v["total"] for k, v in result["per_subset"].items()} == {
        "hep-go": 2,
        "x": 1,
        "(no subset)": 1,
        "math-prm": 2,
    }
    assert result["sections"]["Reasoning"]["accuracy"] == pytest.approx((984 * 1.0 + 164 * 0.5) / (984 + 164))
    # without model categories (a plain reward model), every label is a category row
    plain = summarize_pairs(chosen, rejected, categories)
    assert set(plain["per_category"]) == {"qa", "poetry", "chat"} and "other_categories" not in plain


def small_report(with_baseline: bool, with_categories: bool = True):
    categories = ["qa", "qa", "chat", "poetry", ""] if with_categories else [""] * 5
    subsets = ["alpacaeval-easy", "mt-bench-hard", "donotanswer", "math-prm", "hep-go"]
    routed = ["qa", "chat", "chat", "qa", "qa"]
    report = {
        "data": "pairs.jsonl",
        "num_pairs": 5,
        "counts": {"human_ties_excluded": 0},
        "dmoerm": summarize_pairs(
            [1, 0, 2, 3, 1],
            [0, 1, 1, 0, 2],
            categories,
            subsets=subsets,
            routed=routed,
            model_categories=["qa", "chat"],
        ),
    }
    if with_baseline:
        report["baseline"] = summarize_pairs(
            [0, 1, 2, 3, 1],
            [1, 0, 1, 0, 2],
            categories,
            subsets=subsets,
            routed=routed,
            model_categories=["qa", "chat"],
        )
    return report


def test_markdown_has_intervals_unknown_category_note_routed_and_sections():
    markdown = report_markdown(small_report(with_baseline=True))
    assert f"| {OTHER_CATEGORIES} | 1 |" in markdown and "poetry (1)" in markdown
    assert f"| {NO_CATEGORY} | 1 |" in markdown and "| overall, model categories | 3 |" in markdown
    assert (
        "by routed category" in markdown and "## RewardBench sections" in markdown and "| **Score** | 5 |" in markdown
    )
    assert "| math-prm | 1 |" in markdown
    overall = next(line for line in markdown.splitlines() if line.startswith("| **overall** |"))
    assert overall.count("[") == 2  # the DMoERM's and the baseline's accuracy, each with its interval


def test_markdown_says_what_was_skipped_or_truncated():
    report = small_report(with_baseline=False)
    assert "Input:" not in report_markdown(report)
    report["counts"].update(skipped_records=2, pairs_truncated_left=3, baseline_pairs_truncated_left=0)
    line = next(line for line in report_markdown(report).splitlines() if line.startswith("Input:"))
    assert "2 invalid record(s) skipped" in line and "3 pairs longer than the model accepts" in line
    assert "baseline" not in line  # zero counts stay out


def bars_and_legend(figure):
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    bars = [patch for axis in figure.axes for patch in axis.patches]
    return bars, [legend.get_window_extent(renderer) for legend in figure.legends], renderer


@pytest.mark.parametrize("with_baseline", [True, False])
@pytest.mark.parametrize("with_categories", [True, False])
def test_chart_shows_counts_and_its_legend_covers_no_bar(with_baseline, with_categories):
    report = small_report(with_baseline, with_categories)
    figure = report_figure(report)
    bars, legends, renderer = bars_and_legend(figure)
    series = 2 if with_baseline else 1
    first = figure.axes[0]
    labels = [tick.get_text() for tick in first.get_xticklabels()]
    if with_categories:
        assert labels == ["chat", "qa", OTHER_CATEGORIES, NO_CATEGORY, "overall, model categories", "overall"]
    else:  # no categories in the data: the routed categories are the rows
        assert labels == ["chat", "qa", "overall"]
    assert len(first.patches) == series * len(labels)
    counts = sorted(text.get_text() for text in first.texts)
    expected_rows = report["dmoerm"]["per_routed_category"] if not with_categories else None
    if expected_rows:
        assert counts == sorted([f"n={v['total']}" for v in expected_rows.values()] * series + ["n=5"] * series)
    assert len(figure.axes) == 2 and [t.get_text() for t in figure.axes[1].get_xticklabels()][-1] == "Score"
    assert len(legends) == 1
    assert not any(legends[0].overlaps(bar.get_window_extent(renderer)) for bar in bars)
    for axis in figure.axes:
        assert not legends[0].overlaps(axis.get_window_extent(renderer))
    assert all(math.isfinite(bar.get_height()) for bar in bars)


def test_plotting_leaves_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from dmoerm_trl.evaluation_report import plot_report

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend that is not Agg: the old code switched it to Agg
    try:
        plot_report(small_report(with_baseline=True), tmp_path / "chart.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_comparison_against_a_hand_computation():
    from dmoerm_trl.evaluation_stats import paired_comparison

    first = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 3
    second = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 3
    result = paired_comparison(first, second)
    assert (result["only_first_right"], result["only_second_right"], result["pairs"]) == (8, 2, 18)
    assert result["difference"] == pytest.approx(6 / 18)
    # exact McNemar: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert result["mcnemar_p"] == pytest.approx(112 / 1024)
    # Agresti-Min: cells + 1/2 -> 8.5 and 2.5 of 20; Wald interval on that table
    centre, half = 6 / 20, 1.959963984540054 * math.sqrt(11 - 36 / 20) / 20
    assert result["ci95"] == pytest.approx([centre - half, centre + half])
    same = paired_comparison([1, 0, 1], [1, 0, 1])
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0 and same["ci95"][0] < 0 < same["ci95"][1]
    with pytest.raises(ValueError, match="same pairs"):
        paired_comparison([1], [1, 0])
