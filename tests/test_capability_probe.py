"""benchmarks/capability_probe.py on a tiny random Llama and a fake run whose labels are the test pairs themselves:
a probe that fits its labels exactly orders those pairs as the labels do, with the truth (labels right) or against it
(labels inverted); layers the backbone lacks are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import capability_probe
from fake_demo_run import fake_run


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_probe_fit_on_the_test_pairs_follows_its_labels(tiny_llama_path, tmp_path, sign):
    run = fake_run(tmp_path, sign)  # labels: the category's test pairs, chosen = higher (sign 1) or lower truth
    rows = capability_probe.probe(run, tiny_llama_path, ["chitchat/proactivity"], layers=[1, 2], alpha=1e-6)
    assert [(r["capability"], r["layer"]) for r in rows] == [("chitchat/proactivity", 1), ("chitchat/proactivity", 2)]
    for row in rows:
        assert row["labelled_pairs"] == 12 and 0 < row["test_separated"] <= 12
        assert row["fit_on_labels"] == 1.0  # 12 differences in 32 dimensions: fit exactly
        expected = row["test_separated"] if sign > 0 else 0
        assert row["probe_agrees_with_truth"] == expected, row


def test_layers_the_backbone_lacks_and_unfinished_runs_are_refused(tiny_llama_path, tmp_path):
    run = fake_run(tmp_path / "run", 1.0)
    with pytest.raises(ValueError, match=r"--layers \[3\].*layers 1..2"):
        capability_probe.probe(run, tiny_llama_path, ["chitchat/proactivity"], layers=[2, 3])
    (run / "labels" / "capability_pairs.jsonl").unlink()
    script = str(REPO / "benchmarks" / "capability_probe.py")
    result = subprocess.run(
        [sys.executable, script, str(run), "--capabilities", "chitchat/proactivity", "--layers", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "labels/capability_pairs.jsonl" in result.stderr
