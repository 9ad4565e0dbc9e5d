"""Reruns into an existing output folder: changed settings refused (or forced with --restart), run_config.json true
to the model in the folder, early-stopping patience carried over a resume."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from trainer_helpers import quick_args
from transformers import TrainerCallback

from dmoerm_trl.commands.train import main as train_main
from dmoerm_trl.commands.train import parse_config
from dmoerm_trl.trainers import DMoERMTrainingPipeline, TrainingDataError
from dmoerm_trl.trainers.run_config import RESULT_NEUTRAL_KEYS, build_run_config, changed_settings, check_rerun

ROUTER_ONLY = ("--stages", "router", "--num_train_epochs", "1", "--train_baseline", "false")


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def run(output_dir, *extra, capsys):
    code = train_main(quick_args(output_dir, *ROUTER_ONLY, *extra))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.slow
def test_a_rerun_with_another_lora_r_is_refused_and_restart_forces_it(tmp_path, capsys, one_thread):
    output_dir = tmp_path / "run"
    assert run(output_dir, capsys=capsys)[0] == 0
    model_files = {p.name: p.read_bytes() for p in output_dir.iterdir() if p.is_file()}
    assert read_json(output_dir / "config.json")["lora_r"] == 8

    code, err = run(output_dir, "--lora_r", "4", "--router_learning_rate", "1e-3", capsys=capsys)
    assert code == 2 and "Traceback" not in err
    message = [line for line in err.splitlines() if "dmoerm train: error" in line]
    assert len(message) == 1, err
    assert "lora_r: 8 -> 4" in message[0] and "router_learning_rate: 0.003 -> 0.001" in message[0]
    assert "--restart true" in message[0] and "router" in message[0]
    # nothing in the folder changed: run_config.json still describes the model that is there
    assert {p.name: p.read_bytes() for p in output_dir.iterdir() if p.is_file()} == model_files

    code, err = run(output_dir, "--lora_r", "4", "--restart", "true", capsys=capsys)
    assert code == 0, err
    assert read_json(output_dir / "run_config.json")["model_args"]["lora_r"] == 4
    assert read_json(output_dir / "config.json")["lora_r"] == 4
    summary = read_json(output_dir / "training_summary.json")
    assert summary["ran_this_time"] == ["router"]


def test_a_rerun_with_only_logging_and_thread_changes_resumes(tmp_path, capsys, one_thread):
    output_dir = tmp_path / "run"
    old_umask = os.umask(0o027)
    try:
        assert run(output_dir, capsys=capsys)[0] == 0
    finally:
        os.umask(old_umask)
    # every file and folder of the run (stages, checkpoints, backbone, model) got the umask's permissions
    modes = {str(p.relative_to(output_dir)): stat.S_IMODE(p.stat().st_mode) for p in output_dir.rglob("*")}
    assert any(name.endswith("model.safetensors") for name in modes) and "dmoerm_heads.safetensors" in modes
    assert {
        name: oct(mode) for name, mode in modes.items() if mode != (0o750 if (output_dir / name).is_dir() else 0o640)
    } == {}
    before = read_json(output_dir / "pipeline_state.json")["stages"]
    code, err = run(
        output_dir,
        "--logging_steps",
        "1",
        "--report_to",
        "tensorboard",
        "--torch_num_threads",
        "2",
        "--run_name",
        "again",
        "--disable_tqdm",
        "false",
        "--save_total_limit",
        "1",
        capsys=capsys,
    )
    assert code == 0, err
    assert read_json(output_dir / "training_summary.json")["ran_this_time"] == []  # finished router kept
    assert read_json(output_dir / "pipeline_state.json")["stages"] == before
    stored = read_json(output_dir / "run_config.json")["training_args"]
    assert stored["logging_steps"] == 1 and stored["report_to"] == ["tensorboard"]


def test_changed_settings_are_compared_key_by_key(tmp_path):
    model_args, data_args, training_args = parse_config(quick_args(tmp_path / "run"))
    stored = build_run_config(model_args, data_args, training_args)
    for key in ("logging_steps", "report_to", "torch_num_threads", "stages", "push_to_hub", "hub_token"):
        assert key in RESULT_NEUTRAL_KEYS
    model_args, data_args, training_args = parse_config(
        quick_args(
            tmp_path / "run",
            "--logging_steps",
            "1",
            "--report_to",
            "tensorboard",
            "--seed",
            "3",
            "--tiny_backbone_hidden_size",
            "64",
            "--validation_split_ratio",
            "0.3",
        )
    )
    new = build_run_config(model_args, data_args, training_args)
    assert changed_settings(stored, new) == [
        ("tiny_backbone_hidden_size", 32, 64),
        ("validation_split_ratio", 0.15, 0.3),
        ("seed", 0, 3),
    ]
    new["training_args"]["an_argument_of_a_newer_transformers"] = 1  # keys on one side only are not compared
    del new["training_args"]["max_grad_norm"]
    assert [key for key, _, _ in changed_settings(stored, new)] == [
        "tiny_backbone_hidden_size",
        "validation_split_ratio",
        "seed",
    ]


def test_a_killed_run_with_only_a_checkpoint_is_protected_too(tmp_path):
    output_dir = tmp_path / "run"
    (output_dir / "stages" / "task__chitchat" / "checkpoint-3").mkdir(parents=True)
    (output_dir / "run_config.json").write_text(json.dumps({"model_args": {"lora_r": 8}}))
    new = {"model_args": {"lora_r": 16}}
    with pytest.raises(TrainingDataError, match=r"lora_r: 8 -> 16.*--restart true") as info:
        check_rerun(output_dir, new, {"stages": {}})
    assert "stages/task__chitchat/checkpoint-3" in str(info.value) and "\n" not in str(info.value)
    # without any trained result, changed settings only report what changed (the stale leftovers get deleted)
    (output_dir / "stages" / "task__chitchat" / "checkpoint-3").rmdir()
    assert check_rerun(output_dir, new, {"stages": {"label": {"status": "skipped"}}}) == [("lora_r", 8, 16)]


def test_a_failed_first_run_does_not_pin_its_settings(tmp_path, capsys, one_thread):
    output_dir = tmp_path / "run"
    code, err = run(
        output_dir,
        "--dataset_path",
        str(tmp_path / "missing.jsonl"),
        "--tiny_backbone_hidden_size",
        "48",
        capsys=capsys,
    )
    assert code == 2 and "missing.jsonl" in err
    assert read_json(output_dir / "backbone" / "config.json")["hidden_size"] == 48
    assert run(output_dir, capsys=capsys)[0] == 0  # other settings: fine, nothing was trained
    assert read_json(output_dir / "backbone" / "config.json")["hidden_size"] == 32  # rebuilt, not reused
    assert read_json(output_dir / "run_config.json")["model_args"]["tiny_backbone_hidden_size"] == 32


class StopAfterSave(TrainerCallback):
    """Interrupts training right after the checkpoint of ``epoch`` is on disk (what a kill would leave)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_save(self, args, state, control, **kwargs):
        if state.epoch is not None and state.epoch >= self.epoch:
            raise KeyboardInterrupt(f"interrupted after the checkpoint of epoch {state.epoch}")


def test_a_resumed_stage_stops_early_at_the_same_epoch(tmp_path, one_thread):
    # lr 0: the validation accuracy never improves after the first evaluation, so with patience 2 an uninterrupted
    # stage stops after epoch 3 of 8. Interrupted after epoch 2 (patience count 1), the resumed stage must stop
    # after epoch 3 as well, not count afresh and stop after epoch 4.
    args = (
        "--stages",
        "router",
        "--train_baseline",
        "false",
        "--num_train_epochs",
        "8",
        "--router_learning_rate",
        "0",
        "--early_stopping_patience",
        "2",
        "--save_total_limit",
        "3",
    )

    def pipeline(output_dir, callbacks=()):
        return DMoERMTrainingPipeline(*parse_config(quick_args(output_dir, *args)), callbacks=list(callbacks))

    def eval_epochs(output_dir):
        history = read_json(output_dir / "stages" / "router" / "log_history.json")
        return sorted({entry["epoch"] for entry in history if "eval_accuracy" in entry})  # + the final evaluate()

    whole = pipeline(tmp_path / "whole").run()["stages"]["router"]
    assert eval_epochs(tmp_path / "whole") == [1.0, 2.0, 3.0]

    with pytest.raises(KeyboardInterrupt):
        pipeline(tmp_path / "resumed", [StopAfterSave(epoch=2)]).run()
    checkpoint = tmp_path / "resumed" / "stages" / "router" / f"checkpoint-{2 * whole['global_step'] // 3}"
    trainer_state = read_json(checkpoint / "trainer_state.json")
    assert trainer_state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"] == {
        "early_stopping_patience_counter": 1
    }
    resumed = pipeline(tmp_path / "resumed").run()["stages"]["router"]
    assert resumed["resumed_from"] == str(checkpoint)
    assert eval_epochs(tmp_path / "resumed") == [1.0, 2.0, 3.0]
    assert resumed["global_step"] == whole["global_step"]
    assert resumed["metrics"]["eval_accuracy"] == whole["metrics"]["eval_accuracy"]
