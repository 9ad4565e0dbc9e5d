"""benchmarks/phase3_study.py end to end on a fake finished run built around the checked-in tiny DMoERM: cached
phase-3/validation features where the first feature dimension decides the preference, and gold test pairs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import phase3_study

CATEGORIES = {"chitchat": ["empathy", "fluency"], "objective_qa": ["correctness", "logic", "depth"]}


def _features(n: int, width: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    chosen, rejected = torch.randn(n, width, generator=generator), torch.randn(n, width, generator=generator)
    chosen[:, 0] += 2.0  # a learnable signal: chosen texts are higher on dimension 0
    return chosen, rejected


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("phase3") / "p8s0"
    shutil.copytree(REPO / "tests" / "fixtures" / "saved_dmoerm_v1", run / "dmoerm")
    args = {"per_device_train_batch_size": 4, "learning_rate": 1e-3, "aggregator_learning_rate": 1e-3}
    (run / "dmoerm" / "run_config.json").write_text(json.dumps({"training_args": {**args, "max_length": 128}}))
    generator = torch.Generator().manual_seed(0)
    for category, capabilities in CATEGORIES.items():
        stage = run / "dmoerm" / "stages" / f"aggregator__{category}"
        stage.mkdir(parents=True)
        width = 32 * len(capabilities)  # the fixture's hidden size is 32
        tensors = dict(zip(("train_chosen", "train_rejected"), _features(24, width, generator)))
        tensors.update(zip(("eval_chosen", "eval_rejected"), _features(6, width, generator)))
        save_file(tensors, str(stage / "features.safetensors"))
    (run / "data").mkdir()
    yaml = "categories:\n" + "".join(
        f"  {c}:\n    capabilities:\n" + "".join(f"      {cap}: {{}}\n" for cap in caps)
        for c, caps in CATEGORIES.items()
    )
    (run / "data" / "demo_categories.yaml").write_text(yaml)
    records = [
        {"src": [f"Question {i} about {c}?"], "tgt": [], "response": [f"Good answer {i}.", f"Bad {i}."],
         "rank": [1, 2], "label": c}
        for c in CATEGORIES for i in range(5)
    ]  # fmt: skip
    (run / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_train_learns_the_signal_and_keeps_the_best_epochs():
    generator = torch.Generator().manual_seed(1)
    train, validation = _features(32, 8, generator), _features(16, 8, generator)
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 1)
    before = phase3_study._pair_loss(linear, *train).item()
    history, best, best_acc = phase3_study._train(linear, linear.parameters(), train, 0.05, 8, 10, 0, validation)
    assert phase3_study._pair_loss(linear, *train).item() < before
    assert len(history) == 10 and best is not None and best_acc is not None
    losses = [loss for loss, _ in history]
    linear.load_state_dict(best)
    assert phase3_study._pair_loss(linear, *validation).item() == pytest.approx(min(losses), abs=1e-5)


def test_summary_pairs_every_variant_with_the_reference():
    results = {
        ("r", "c", "mlp-e6"): {"correct": [1.0, 0.0, 1.0, 1.0], "val_loss": 0.7},
        ("r", "c", "mlp-e1"): {"correct": [0.0, 0.0, 1.0, 1.0], "val_loss": 0.6},
    }
    rows = {row["variant"]: row for row in phase3_study.summarise(results, ("mlp-e6", "mlp-e1"))}
    assert rows["mlp-e6"]["accuracy"] == 0.75 and rows["mlp-e6"]["diff_vs_e6"] == 0.0
    assert rows["mlp-e1"]["accuracy"] == 0.5 and rows["mlp-e1"]["diff_vs_e6"] == -0.25
    assert rows["mlp-e1"]["diff_se"] == pytest.approx(0.25)  # differences [-1, 0, 0, 0]: sd 0.5 over 4 pairs


def test_the_study_runs_on_a_finished_run(fake_run, tmp_path):
    out = tmp_path / "study.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "phase3_study.py"), str(fake_run), "--seeds", "2",
         "--output", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in table[1:]] == list(phase3_study.VARIANTS)
    summary = json.loads(out.read_text())
    cells = summary["cells"]
    assert len(cells) == len(CATEGORIES) * len(phase3_study.VARIANTS)
    assert all(len(cell["correct"]) == 5 and cell["train_pairs"] == 24 for cell in cells.values())
    reference = {row["variant"]: row for row in summary["summary"]}["mlp-e6"]
    assert reference["pairs"] == 10 and reference["diff_vs_e6"] == 0.0


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "phase3_study.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "not a finished benchmarks/demo_sizes.py run" in result.stderr


def test_a_fidelity_model_folder_finds_its_data_through_run_config(fake_run, tmp_path):
    model = tmp_path / "run_seed1"
    shutil.copytree(fake_run / "dmoerm", model)
    config = json.loads((model / "run_config.json").read_text())
    config["data_args"] = {"dataset_path": str(fake_run / "data" / "train.jsonl")}
    config["model_args"] = {"categories": str(fake_run / "data" / "demo_categories.yaml")}
    (model / "run_config.json").write_text(json.dumps(config))
    layout = phase3_study._layout(model)
    assert layout == {
        "model": model,
        "test": fake_run / "data" / "test.jsonl",
        "categories": fake_run / "data" / "demo_categories.yaml",
    }
    config["model_args"]["categories"] = str(tmp_path / "gone.yaml")
    (model / "run_config.json").write_text(json.dumps(config))
    assert phase3_study._layout(model) is None and phase3_study._layout(tmp_path) is None
