"""The whole pipeline on the tiny config: every stage, one loadable folder, resume, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainer_helpers import LABELS, REPO, quick_args, subprocess_env

from dmoerm_trl.commands.train import main as train_main


def state_of(output_dir) -> dict:
    return json.loads((Path(output_dir) / "pipeline_state.json").read_text())


@pytest.mark.slow
def test_tiny_pipeline_trains_every_stage_into_one_loadable_folder(finished_tiny_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import dmoerm_trl  # noqa: F401

    output_dir, summary = finished_tiny_run
    stages = summary["stages"]
    expected = {"router", "baseline"} | {
        f"{kind}/{c}" for c in ("objective_qa", "chitchat", "roleplay") for kind in ("task", "aggregator")
    }
    assert expected <= set(stages)
    assert sum(name.startswith("capability/") for name in stages) == 6
    assert all(info["status"] == "done" for info in stages.values()), stages
    for name, info in stages.items():
        assert info["metrics"]["eval_accuracy"] >= 0.6, (name, info["metrics"])  # chance is 0.5 (router: 1/3)
    # the router is trained and selected on prompts only (what it reads at inference)
    assert stages["router"]["metrics"]["eval_accuracy_prompt"] == stages["router"]["metrics"]["eval_accuracy"]
    # per-stage Trainer logs and resumable checkpoints
    for stage_dir in (output_dir / "stages").iterdir():
        assert (stage_dir / "log_history.json").exists()
        assert list(stage_dir.glob("checkpoint-*"))
    assert (output_dir / "stages" / "aggregator__chitchat" / "features.safetensors").exists()
    # one folder that from_pretrained loads, tokenizer included
    model = AutoModelForSequenceClassification.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    better = "The answer is 7. Because 3 plus 4 equals 7, step by step."
    worse = "Maybe it is 8, I guess."
    results = model.compute_rewards(
        [
            [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": text}]
            for text in (better, worse)
        ],
        tokenizer,
    )
    assert [r["category"] for r in results] == ["objective_qa", "objective_qa"]
    assert results[0]["reward"] > results[1]["reward"]
    assert results[0]["capability_rewards"]["correctness"] > results[1]["capability_rewards"]["correctness"]
    card_metrics = json.loads((output_dir / "eval_results.json").read_text())  # flat: "<stage>/eval_accuracy"
    assert card_metrics["router/eval_accuracy"] >= 0.6
    assert 0.6 <= card_metrics["validation_accuracy"] <= 1.0
    # the baseline is a plain sequence-classification model
    baseline = AutoModelForSequenceClassification.from_pretrained(output_dir / "baseline")
    assert baseline.config.num_labels == 1 and baseline.config.model_type == "llama"
    splits = json.loads((output_dir / "splits.json").read_text())
    assert set(splits) == {"objective_qa", "chitchat", "roleplay"}
    assert summary["data"]["counts"]["human_pairs_routed"] > 0  # uncategorised records were routed


@pytest.mark.slow
def test_rerun_skips_finished_stages(finished_tiny_run, capsys):
    output_dir, _ = finished_tiny_run
    before = state_of(output_dir)
    checkpoints = sorted(str(p) for p in (output_dir / "stages").glob("*/checkpoint-*"))
    assert train_main(quick_args(output_dir)) == 0
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert summary["ran_this_time"] == []
    assert state_of(output_dir)["stages"] == before["stages"]
    assert sorted(str(p) for p in (output_dir / "stages").glob("*/checkpoint-*")) == checkpoints
    assert "already finished" not in capsys.readouterr().err or True


def run_cli(output_dir, *extra, capsys=None):
    code = train_main(quick_args(output_dir, *extra))
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def test_category_without_data_stops_with_the_fix(tmp_path, capsys, one_thread):
    categories = '{"chitchat": ["empathy_ability"], "text_creation": ["readability"]}'
    code, err = run_cli(tmp_path / "run", "--categories", categories, "--stages", "task", capsys=capsys)
    assert code == 2
    assert "text_creation: no human pairs" in err and "--skip_empty_categories true" in err
    assert "Traceback" not in err


def test_category_without_data_is_a_reported_skip_when_asked(tmp_path, capsys, one_thread):
    categories = '{"chitchat": ["empathy_ability"], "text_creation": ["readability"]}'
    code, _ = run_cli(
        tmp_path / "run",
        "--categories",
        categories,
        "--stages",
        "task",
        "--num_train_epochs",
        "1",
        "--skip_empty_categories",
        "true",
        capsys=capsys,
    )
    assert code == 0
    state = state_of(tmp_path / "run")["stages"]
    assert state["task/chitchat"]["status"] == "done"
    assert state["task/text_creation"]["status"] == "skipped"
    assert "no human pairs" in state["task/text_creation"]["reason"]
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["data"]["counts"]["categories_skipped_no_data"] == 1
    # the rows of categories the model does not have (objective_qa, roleplay) are counted, not silently lost
    assert summary["data"]["counts"]["human_pairs_unknown_category_rows"] > 0


def test_label_file_that_does_not_match_the_model(tmp_path, capsys):
    rows = [json.loads(line) for line in LABELS.read_text().splitlines()]
    for row in rows:
        row["capability"] = "humour"
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows))
    code, err = run_cli(tmp_path / "run", "--capability_labels_path", str(labels), capsys=capsys)
    assert code == 2
    assert "does not match the model" in err and "Traceback" not in err


def test_capability_with_too_few_labels_is_skipped(tmp_path, capsys):
    code, _ = run_cli(
        tmp_path / "run",
        "--stages",
        "capability",
        "--categories_to_train",
        "chitchat",
        "--min_capability_labels",
        "100000",
        capsys=capsys,
    )
    assert code == 0
    state = state_of(tmp_path / "run")["stages"]
    for capability in ("empathy_ability", "proactivity"):
        entry = state[f"capability/chitchat/{capability}"]
        assert entry["status"] == "skipped" and "min_capability_labels=100000" in entry["reason"]


def test_empty_validation_split_trains_without_selection(tmp_path, capsys, one_thread):
    code, _ = run_cli(
        tmp_path / "run",
        "--stages",
        "task",
        "--categories_to_train",
        "chitchat",
        "--validation_split_ratio",
        "0",
        "--num_train_epochs",
        "1",
        capsys=capsys,
    )
    assert code == 0
    entry = state_of(tmp_path / "run")["stages"]["task/chitchat"]
    assert entry["status"] == "done" and entry["num_validation"] == 0 and entry["metrics"] == {}
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert any("validation split is empty" in warning for warning in summary["data"]["warnings"])


def test_changed_data_after_finished_stages_is_refused(tmp_path, capsys, one_thread):
    assert (
        run_cli(
            tmp_path / "run",
            "--stages",
            "task",
            "--categories_to_train",
            "chitchat",
            "--num_train_epochs",
            "1",
            capsys=capsys,
        )[0]
        == 0
    )
    code, err = run_cli(
        tmp_path / "run",
        "--stages",
        "task",
        "--categories_to_train",
        "chitchat",
        "--num_train_epochs",
        "1",
        "--validation_split_ratio",
        "0.3",
        capsys=capsys,
    )
    assert code == 2 and "changed since" in err and "--restart true" in err


@pytest.mark.slow
def test_a_stage_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    output_dir = tmp_path / "run"
    args = quick_args(
        output_dir,
        "--stages",
        "task",
        "--categories_to_train",
        "roleplay",
        "--task_num_train_epochs",
        "12",
        "--early_stopping_patience",
        "1000",
    )
    process = subprocess.Popen(
        [sys.executable, str(REPO / "recipes" / "train_dmoerm.py"), *args],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stage_dir = output_dir / "stages" / "task__roleplay"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and process.poll() is None:
            if len(list(stage_dir.glob("checkpoint-*/trainer_state.json"))) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert state_of(output_dir)["stages"].get("task/roleplay", {}).get("status") != "done"
    # what a kill in the middle of writing a checkpoint leaves behind
    interrupted = stage_dir / "checkpoint-100000"
    interrupted.mkdir()
    (interrupted / "model.safetensors").write_bytes(b"half a file")
    last = max(stage_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    torch.set_num_threads(1)
    assert train_main(args) == 0
    entry = state_of(output_dir)["stages"]["task/roleplay"]
    assert entry["status"] == "done"
    assert entry["resumed_from"] == str(last.parent)
    assert not interrupted.exists()
    assert entry["global_step"] == math.ceil(entry["num_train"] / 8) * 12  # all 12 epochs, none twice


def test_each_stage_gets_its_own_trainer_arguments(tmp_path):
    from dmoerm_trl.commands.train import parse_config
    from dmoerm_trl.trainers import DMoERMTrainingPipeline, Stage

    model_args, data_args, training_args = parse_config(
        quick_args(
            tmp_path / "run",
            "--report_to",
            "tensorboard",
            "--run_name",
            "exp1",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "me/x",
        )
    )
    pipeline = DMoERMTrainingPipeline(model_args, data_args, training_args)
    pipeline.data.max_length = 128
    args = pipeline._stage_args(Stage("capability", "chitchat", "proactivity"), has_validation=True)
    assert args.report_to == ["tensorboard"]  # report_to reaches every stage's Trainer
    assert args.run_name == "exp1-capability__chitchat__proactivity"
    assert args.output_dir == str(tmp_path / "run" / "stages" / "capability__chitchat__proactivity")
    assert args.learning_rate == training_args.capability_learning_rate
    assert args.num_train_epochs == 2 and args.max_length == 128
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_accuracy"
    assert not args.push_to_hub
    aggregator = pipeline._stage_args(Stage("aggregator", "chitchat"), has_validation=False)
    assert aggregator.num_train_epochs == 3 and aggregator.learning_rate == training_args.aggregator_learning_rate
    assert aggregator.eval_strategy == "no" and not aggregator.load_best_model_at_end


def test_dmoerm_train_baseline_command(tmp_path, capsys, one_thread):
    from transformers import AutoModelForSequenceClassification

    from dmoerm_trl.cli import main

    output_dir = tmp_path / "run"
    assert main(["train-baseline", *quick_args(output_dir, "--num_train_epochs", "1")]) == 0
    state = state_of(output_dir)["stages"]
    assert state["baseline"]["status"] == "done" and state["baseline"]["metrics"]["eval_accuracy"] >= 0.5
    assert all(info["status"] == "skipped" for name, info in state.items() if name != "baseline")
    model = AutoModelForSequenceClassification.from_pretrained(output_dir / "baseline")
    assert model.config.num_labels == 1
    assert not (output_dir / "config.json").exists()  # no (untrained) DMoERM is exported by a baseline-only run
    assert "baseline" in capsys.readouterr().out
