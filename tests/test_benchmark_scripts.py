"""The scoring-speed and memory benchmarks run end to end on a tiny backbone and print their tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dmoerm_trl.testing_utils import make_tiny_llama

REPO = Path(__file__).resolve().parents[1]
# Subprocesses importing torch + transformers (~50 s in all); no TRL involved, so one TRL line in CI runs them.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("bench-llama4"), num_layers=4)


def run(script, *args):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# scoring_speed.py on a tiny model: 2 categories x 2 capabilities, one batch of 4 x 8 tokens, 1 repeat
SCORING_SPEED_SMALL = ["--categories", "2", "--capabilities", "2", "--batch", "4", "--length", "8", "--repeats", "1"]


def test_scoring_speed_with_trunk_rows(llama4, tmp_path):
    out = run(
        "scoring_speed.py",
        "--backbone",
        llama4,
        *SCORING_SPEED_SMALL,
        "--trunk-layers",
        "0,auto,1",
        "--json",
        str(tmp_path / "s.json"),
    )
    assert "| dmoerm (sequential) |" in out and "paper loop (per sample, per expert)" in out
    assert "dmoerm, trunk 3 of 4 layers" in out and "dmoerm, trunk 1 of 4 layers" in out  # auto = 3/4 of 4 layers
    assert "faster than the paper loop" in out
    numbers = json.loads((tmp_path / "s.json").read_text())
    assert set(numbers["trunks"]) == {"1", "3"} and numbers["num_layers"] == 4
    assert all(wall > 0 for wall, _ in numbers["trunks"].values())
    assert "dmoerm, trunk 3, trunk router of 4 layers" in out  # router_mode="trunk" rows: bound (3 + 2 x 1) / 12
    assert "its bound = 0.42x the full" in out and set(numbers["trunk_router"]) == {"1", "3"}


def test_scoring_speed_in_bfloat16(llama4, tmp_path):
    out = run(
        "scoring_speed.py",
        "--backbone",
        llama4,
        *SCORING_SPEED_SMALL,
        "--trunk-layers",
        "0",
        "--dtype",
        "bfloat16",
        "--json",
        str(tmp_path / "s.json"),
    )
    assert "; bfloat16;" in out and "faster than the paper loop" in out  # the loop's rewards matched in bf16 too
    assert json.loads((tmp_path / "s.json").read_text())["dtype"] == "bfloat16"


def test_memory_params_with_a_trunk(llama4, tmp_path):
    out = run(
        "memory_params.py",
        "--backbone",
        llama4,
        "--layouts",
        "dmoerm,dmoerm-1",
        "--categories",
        "2",
        "--capabilities",
        "2",
        "--batch",
        "2",
        "--length",
        "8",
        "--lora-r",
        "4",
        "--trunk-layers",
        "2",
        "--json",
        str(tmp_path / "m.json"),
    )
    assert "trunk 2 layers" in out and "dmoerm 2 categories / 1 category" in out
    results = json.loads((tmp_path / "m.json").read_text())
    five, one = results["dmoerm 2x2 (shared base)"], results["dmoerm 1x2 (shared base)"]
    assert five["total"] > one["total"] and five["peak_rss_mib"] > 0
