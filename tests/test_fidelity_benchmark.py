"""`benchmarks/fidelity.py --fast` end to end: every method evaluated against the gold, best-of-n curves, report files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"
METHODS = [
    "single RM (all data)",
    "single RM per category",
    "DMoERM",
    "DMoERM (true category)",
    "ensemble mean",
    "ensemble WCO",
    "ensemble UWO",
]


@pytest.mark.slow
def test_fidelity_fast_end_to_end(tmp_path):
    output = tmp_path / "fidelity"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--fast", "--threads", "1", "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    results = json.loads((output / "fidelity.json").read_text())
    categories = results["categories"]
    assert categories == ["objective_qa", "chitchat"]
    assert list(results["accuracy"]) == METHODS
    for name in METHODS:
        entry = results["accuracy"][name]
        assert 0.0 <= entry["overall"] <= 1.0, (name, entry)
        assert entry["pairs"] > 10
        assert set(entry["per_category"]) == set(categories)
        assert all(0.0 <= value <= 1.0 for value in entry["per_category"].values()), (name, entry)
    # the router reads the prompt only: one view (the full-text view exists only for models without a boundary)
    assert 0.0 <= results["router"]["prompt"] <= 1.0
    assert results["router"]["full"] is None
    # The evaluation module scores the saved DMoERM on the same pairs: the same accuracy as the benchmark's scorer.
    assert results["router"]["dmoerm_accuracy_via_evaluation_module"] == pytest.approx(
        results["accuracy"]["DMoERM"]["overall"]
    )
    # Significance: DMoERM against every other method on the same test pairs, from the per-pair correctness file.
    per_pair = json.loads((output / "per_pair_correct.json").read_text())
    dmoerm, single = per_pair["correct"]["DMoERM"], per_pair["correct"]["single RM (all data)"]
    assert len(dmoerm) == results["accuracy"]["DMoERM"]["pairs"]
    assert sum(dmoerm) / len(dmoerm) == pytest.approx(results["accuracy"]["DMoERM"]["overall"])
    test = results["significance"]["DMoERM vs single RM (all data)"]
    assert test["only_first_right"] == sum(1 for a, b in zip(dmoerm, single) if a and not b)
    assert test["only_second_right"] == sum(1 for a, b in zip(dmoerm, single) if b and not a)
    assert 0.0 <= test["mcnemar_p"] <= 1.0
    assert test["bootstrap_95ci"][0] <= test["difference"] <= test["bootstrap_95ci"][1]
    assert set(results["significance"]) == {f"DMoERM vs {m}" for m in METHODS if m != "DMoERM"}
    overall = results["accuracy"]["DMoERM"]
    assert overall["stderr"] == pytest.approx(
        (overall["overall"] * (1 - overall["overall"]) / overall["pairs"]) ** 0.5, abs=1e-4
    )
    # "Human" ranks are the gold flipped at ~30%; labels came over HTTP from the judge.
    assert 0.5 < results["data"]["human_gold_agreement"] < 0.95
    assert results["labels"]["calls"] > 0 and results["labels"]["labels"] > 0
    stages = results["training"]["dmoerm_pipeline"]
    assert stages["baseline"]["status"] == "done" and stages["router"]["status"] == "done"
    assert set(results["training"]["single_rms"]) == {"seed1", "category_objective_qa", "category_chitchat"}

    # Best-of-n: every method (and the gold oracle) has a curve over n = 1, 2, 4 with growing KL.
    curves = results["best_of_n"]["curves"]
    assert set(curves) == set(METHODS) | {"gold (oracle)"}
    for name, curve in curves.items():
        ns = sorted(curve, key=int)
        assert [int(n) for n in ns] == [1, 2, 4]
        assert [curve[n]["sqrt_kl"] for n in ns] == sorted(curve[n]["sqrt_kl"] for n in ns)
        assert all(math.isfinite(curve[n]["gold"]) for n in ns)
        # Same samples for every proxy: the n = 1 gold reward is the mean over all samples.
        assert curve[ns[0]]["gold"] == pytest.approx(curves["gold (oracle)"]["1"]["gold"], abs=1e-3)
    oracle = curves["gold (oracle)"]
    assert oracle["4"]["gold"] >= max(curve["4"]["gold"] for curve in curves.values()) - 1e-6

    table = (output / "fidelity.md").read_text()
    assert all(f"| {name} |" in table for name in METHODS) and "router accuracy" in table
    assert "| DMoERM |" in done.stdout
    for png in ("accuracy.png", "overoptimization.png"):
        assert (output / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _load_fidelity_report():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fidelity_report", SCRIPT.with_name("fidelity_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_comparison_exact_mcnemar_and_bootstrap():
    fidelity = _load_fidelity_report()
    # 100 pairs: both right on 60, only A on 8, only B on 2, both wrong on 30.
    a = [1] * 60 + [1] * 8 + [0] * 2 + [0] * 30
    b = [1] * 60 + [0] * 8 + [1] * 2 + [0] * 30
    result = fidelity.paired_comparison(a, b, resamples=2000, seed=1)
    assert (result["only_first_right"], result["only_second_right"]) == (8, 2)
    assert result["difference"] == pytest.approx(0.06)
    # exact two-sided binomial test on 10 discordant pairs: 2 * P(X <= 2 | n=10, p=1/2) = 2 * 56 / 1024
    assert result["mcnemar_p"] == pytest.approx(2 * 56 / 1024, abs=1e-5)
    low, high = result["bootstrap_95ci"]
    assert low < 0.06 < high and low > -0.05 and high < 0.15
    same = fidelity.paired_comparison(a, a, resamples=200)
    assert same["mcnemar_p"] == 1.0 and same["difference"] == 0.0 and same["bootstrap_95ci"] == [0.0, 0.0]

    # Per category: the same test on each category's pairs.
    per_pair = {"categories": ["x"] * 50 + ["y"] * 50, "correct": {"DMoERM": a, "single RM (all data)": b}}
    tests = fidelity.significance(per_pair)["DMoERM vs single RM (all data)"]
    assert tests["only_first_right"] == 8 and tests["per_category"]["x"]["pairs"] == 50
    assert tests["per_category"]["y"]["only_first_right"] == 8 and tests["per_category"]["y"]["only_second_right"] == 2
    assert tests["per_category"]["x"]["mcnemar_p"] == 1.0  # no discordant pairs among the first 50


def test_paired_best_of_n_gains_leave_out_prompts_with_nan_gold(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from fidelity_bon import paired_gains

    nan = float("nan")
    gains = {
        "DMoERM": [0.5, nan, 1.0, -0.25],
        "single RM": [0.0, nan, 1.5, -0.75],
        "ensemble mean": [nan, nan, nan, nan],
        "gold (oracle)": [1.0, nan, 2.0, 0.5],
    }
    paired = paired_gains(gains, seed=0)
    assert set(paired) == {"DMoERM vs single RM", "DMoERM vs ensemble mean"}
    single = paired["DMoERM vs single RM"]
    assert single["prompts"] == 3  # prompt 1 has NaN gold: left out of the pairs, not averaged as 0
    assert single["difference"] == pytest.approx((0.5 - 0.5 + 0.5) / 3, abs=1e-4)
    assert -0.5 - 1e-9 <= single["bootstrap_95ci"][0] <= single["bootstrap_95ci"][1] <= 0.5 + 1e-9
    empty = paired["DMoERM vs ensemble mean"]  # no prompt left: NaN, not a crash
    assert empty["prompts"] == 0 and math.isnan(empty["difference"])


def test_help_prints_every_option():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--router-epochs" in result.stdout and "--pairs-per-category" in result.stdout


def test_full_router_schedule_gives_the_prompt_only_router_enough_steps(tmp_path):
    """The router trains on one example per distinct prompt (prompt-only routing): ~4x fewer examples than when it
    also trained on each full conversation. The benchmark's router schedule is in epochs, so its former 0.5 epoch
    became 13 optimiser steps: loss 1.15 (chance ln 3 = 1.10), a router that sent the whole objective_qa category
    elsewhere (0/71 test prompts, docs/benchmarks.md). ~50 steps (2 epochs) reached 98.6%. The full defaults must
    give the router at least 40 steps on the default world's router split."""
    sys.path.insert(0, str(SCRIPT.parent))
    import fidelity

    from dmoerm_trl.data import load_preference_pairs
    from dmoerm_trl.models.dmoerm._prompt_boundary import assistant_opener_ids
    from dmoerm_trl.synthetic.generator import SyntheticDataConfig, generate_dataset, write_dataset
    from dmoerm_trl.testing_utils import make_tiny_tokenizer
    from dmoerm_trl.trainers.router_trainer import router_examples

    args = fidelity.build_parser().parse_args([])
    fidelity._fill_defaults(args)
    dataset = generate_dataset(
        SyntheticDataConfig(
            pairs_per_category=args.pairs_per_category, test_pairs_per_category=1, categories=args.categories, seed=0
        )
    )
    paths = write_dataset(dataset, tmp_path)
    pairs = load_preference_pairs(paths["train"], categories=paths["categories"])
    tokenizer = make_tiny_tokenizer()
    examples = router_examples(pairs, tokenizer, args.categories, None, assistant_opener_ids(tokenizer))
    distinct_prompts = len({tuple(ids) for ids in examples["input_ids"]})
    assert len(examples) == distinct_prompts < len(pairs)  # one example per prompt, fewer than the pairs
    router_split = int(distinct_prompts * (1 - 0.15))  # the pipeline's 15% validation split
    steps = math.ceil(router_split / 8) * args.router_epochs  # batch 8, as _training_config sets
    assert steps >= 40, (distinct_prompts, args.router_epochs, steps)
