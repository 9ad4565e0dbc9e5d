"""benchmarks/expert_truth.py on a fake finished run built from the synthetic world's own test records: experts whose
rewards are the true capability scores agree with the truth on every separated pair, negated ones on none; the same
for the judge's labels; pairs routed elsewhere are left out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import expert_truth
from fake_demo_run import CAPABILITIES, fake_run


@pytest.mark.parametrize("sign, expected", [(1.0, 1.0), (-1.0, 0.0)])
def test_experts_and_labels_that_follow_the_truth_agree_with_it(tmp_path, sign, expected):
    rows = expert_truth.expert_truth(fake_run(tmp_path, sign))
    assert set(rows) == {(category, c) for category, caps in CAPABILITIES.items() for c in caps}
    for key, cell in rows.items():
        for name in ("labels~true", "expert~true"):
            pairs, ties, agreeing = cell[name]
            assert pairs > ties, (key, name)  # some pairs separate
            assert agreeing == expected * (pairs - ties), (key, name, cell[name])
    # the misrouted pair (the last chitchat test) is not counted; labels are
    assert sum(cell["expert~true"][0] for key, cell in rows.items() if key[0] == "chitchat") == 2 * 11
    assert sum(cell["labels~true"][0] for key, cell in rows.items() if key[0] == "chitchat") == 2 * 12
    # the gold orders test pairs by the sum of capabilities, so the truth of each capability mostly agrees with it
    for cell in rows.values():
        pairs, ties, agreeing = cell["true~gold"]
        assert agreeing > (pairs - ties) / 2


def test_the_command_prints_a_table_and_names_a_missing_file(tmp_path):
    run = fake_run(tmp_path / "run", 1.0)
    script = str(REPO / "benchmarks" / "expert_truth.py")
    result = subprocess.run([sys.executable, script, str(run)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "| run | category | capability | labels~true |" in result.stdout
    assert "| run | chitchat | proactivity |" in result.stdout
    (run / "eval_gold" / "eval_examples.jsonl").unlink()
    result = subprocess.run([sys.executable, script, str(run)], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "eval_gold/eval_examples.jsonl" in result.stderr
