"""`dmoerm demo --fast` end to end on a tiny random Llama (reward backbone and policy), then a rerun from the caches."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest


def _run_demo(output, backbone):
    command = [
        sys.executable,
        "-m",
        "dmoerm_trl.cli",
        "demo",
        "--fast",
        "--backbone",
        str(backbone),
        "--policy",
        str(backbone),
        "--max-length",
        "256",
        "--threads",
        "1",
        "--output",
        str(output),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout


def _is_accuracy(value) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.mark.slow
def test_demo_fast_end_to_end_and_rerun_from_caches(tiny_llama_path, tmp_path):
    output = tmp_path / "demo"
    stdout = _run_demo(output, tiny_llama_path)

    # The banners and the final lines name the report and the headline numbers.
    assert "[1/6]" in stdout and "[6/6] Report" in stdout
    assert f"Report: {output}/report.md" in stdout
    assert "accuracy vs gold (clean test): DMoERM" in stdout and "best-of-n gold gain" in stdout
    assert "note: --fast is a smoke run of every step" in stdout  # its numbers are not read as a result
    assert "--fast is a smoke run of every step" in (output / "report.md").read_text().split("## Headline")[0]

    for name in (
        "report.md",
        "metrics.json",
        "accuracy.png",
        "overoptimization.png",
        "best_of_n.csv",
        "eval_gold/eval_results.json",
        "eval_human/eval_results.json",
        "dmoerm/config.json",
        "dmoerm/baseline/config.json",
        "labels/capability_pairs.jsonl",
        "data/test.jsonl",
    ):
        assert (output / name).exists(), name
    for png in ("accuracy.png", "overoptimization.png"):
        assert (output / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads((output / "metrics.json").read_text())
    head = metrics["headline"]
    for key in (
        "dmoerm_gold_accuracy",
        "baseline_gold_accuracy",
        "dmoerm_human_accuracy",
        "baseline_human_accuracy",
        "router_accuracy_prompt",
    ):
        assert _is_accuracy(head[key]), (key, head[key])
    # The "human" labels are the gold flipped at ~30%.
    assert 0.55 < head["human_labels_gold_agreement"] < 0.9
    gold_eval = metrics["evaluation"]["gold_test"]
    assert gold_eval["dmoerm"]["pairs"] > 15 and set(gold_eval["dmoerm"]["per_category"]) == {
        "objective_qa",
        "chitchat",
    }
    # Labels came over HTTP from the judge through the openai client; every expert got some.
    assert metrics["labels"]["calls"] > 0 and metrics["labels"]["labels_kept"] > 0
    assert len(metrics["labels"]["labels_used_per_expert"]) == 4
    assert all(0 < n <= 16 for n in metrics["labels"]["labels_used_per_expert"].values())
    # Every stage of the pipeline ran (router, 2 x (task, 2 experts, aggregator), baseline).
    stages = metrics["training"]["stages"]
    assert len([s for s in stages.values() if s["status"] == "done"]) == 10, stages
    # Best-of-n: n = 1, 2, 4, 8 with growing KL; the oracle never does worse than a single sample.
    for proxy in ("DMoERM", "single RM", "gold (oracle)"):
        curve = metrics["best_of_n"]["curves"][proxy]
        assert sorted(int(n) for n in curve) == [1, 2, 4, 8]
        sqrt_kl = [curve[n]["sqrt_kl"] for n in sorted(curve, key=int)]
        assert sqrt_kl[0] == 0.0 and sqrt_kl == sorted(sqrt_kl)
        assert all(math.isfinite(curve[n]["gold"]) for n in curve)
    oracle = metrics["best_of_n"]["summary"]["gold (oracle)"]
    assert oracle["gold_gain"] >= 0
    assert metrics["best_of_n"]["summary"]["DMoERM"]["gold_gain"] <= oracle["gold_gain"] + 1e-6

    # The policy samples' routing and the (calibrated) reward scale per category are measured and reported.
    routing = metrics["best_of_n"]["policy_sample_routing"]
    prompts, samples = metrics["best_of_n"]["prompts"], metrics["best_of_n"]["samples_per_prompt"]
    assert routing["samples"] == prompts * samples == sum(c["samples"] for c in routing["per_category"].values())
    assert 0 <= routing["misrouted"] <= routing["samples"] and routing["calibrated"] is True
    assert head["policy_sample_misrouting_rate"] == pytest.approx(routing["misrouted"] / routing["samples"], abs=1e-4)
    # each trained category was calibrated (statistics differ from the identity) after phase 3
    for info in routing["per_category"].values():
        assert (info["calibration_mean"], info["calibration_std"]) != (0.0, 1.0)
    assert metrics["best_of_n"]["summary"]["DMoERM"]["gold_gain_sem"] >= 0
    samples_file = json.loads((output / "bon_samples.json").read_text())
    assert len(samples_file["candidates"]) == prompts and samples_file["key"]["n"] == samples

    report = (output / "report.md").read_text()
    assert "![accuracy](accuracy.png)" in report and "![overoptimization](overoptimization.png)" in report
    assert f"{100 * head['dmoerm_gold_accuracy']:.1f}%" in report
    assert "Routing and reward scale on the policy's samples" in report
    assert f"{100 * routing['misrouting_rate']:.1f}%" in report

    # A rerun asks the judge nothing (label cache) and trains nothing (finished stages), with the same results.
    _run_demo(output, tiny_llama_path)
    again = json.loads((output / "metrics.json").read_text())
    assert again["labels"]["calls"] == 0 and again["labels"]["cache_hits"] > 0
    assert again["training"]["ran_this_time"] == []
    assert again["headline"]["dmoerm_gold_accuracy"] == head["dmoerm_gold_accuracy"]
    # ... and samples nothing: the policy samples are reused, so best-of-n comes out the same
    assert again["best_of_n"]["summary"] == metrics["best_of_n"]["summary"]
