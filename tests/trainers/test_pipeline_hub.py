"""The end of a training run: `push_to_hub: true` uploads the trained model (or is refused before training), the
final evaluation reaches the `report_to` trackers (TensorBoard, read back from its event file) and the run's
callbacks, and the exported folder names its base relative to itself (it can be moved)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from trainer_helpers import quick_args, train_one_category
from transformers import AutoTokenizer, TrainerCallback


def _tensorboard_scalars(folder: Path) -> dict[str, float]:
    """Every scalar in the TensorBoard event files under ``folder`` (TFRecord framing, tensorboardX's protobufs)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[value.tag] = value.simple_value
    return scalars


def test_push_to_hub_with_a_local_base_is_refused_before_training(tmp_path, capsys):
    from dmoerm_trl.commands.train import main

    code = main(quick_args(tmp_path / "run", "--push_to_hub", "true", "--hub_model_id", "me/run"))
    err = capsys.readouterr().err
    assert code == 2 and "push_to_hub: true" in err and "save_base_model: true" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "stages").exists()  # nothing trained


@pytest.mark.slow
def test_push_to_hub_at_the_end_and_final_metrics_to_the_trackers(tmp_path, monkeypatch, one_thread):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    from dmoerm_trl import DMoERMForSequenceClassification

    commits, uploaded = [], tmp_path / "uploaded"

    def fake_create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_create_commit(self, repo_id, operations, commit_message, **kwargs):
        commits.append((repo_id, kwargs.get("revision"), sorted(op.path_in_repo for op in operations)))
        for op in operations:
            target = uploaded / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, target)
        return f"https://huggingface.co/{repo_id}/commit/{len(commits)}"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)

    recorded = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            recorded.append(dict(logs or {}))

    import dmoerm_trl.trainers.pipeline as pipeline_module

    original = pipeline_module.DMoERMTrainingPipeline.__init__

    def with_recorder(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.callbacks.append(Recorder())

    monkeypatch.setattr(pipeline_module.DMoERMTrainingPipeline, "__init__", with_recorder)
    run = tmp_path / "run"
    push = (
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "me/tiny-run",
        "--save_base_model",
        "true",
        "--report_to",
        "tensorboard",
    )
    cli_args = train_one_category(run, "chitchat", "empathy_ability", *push)

    # Pushed once, at the end: the exported model, its base and the tokenizer in one commit.
    [(repo, _, files)] = commits
    assert repo == "me/tiny-run" and {"base/model.safetensors", "base/config.json", "tokenizer.json"} <= set(files)
    # What was uploaded scores like the exported folder.
    exported = DMoERMForSequenceClassification.from_pretrained(run)
    assert {p.split("/")[1] for p in files if p.startswith("adapters/")} == set(exported.all_adapter_names())
    reloaded = DMoERMForSequenceClassification.from_pretrained(uploaded)
    tokenizer = AutoTokenizer.from_pretrained(run)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}],
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    torch.testing.assert_close(reloaded(input_ids=ids).logits, exported(input_ids=ids).logits, rtol=0, atol=0)
    state = json.loads((run / "pipeline_state.json").read_text())
    assert state["pushed_commit"].endswith("/commit/1")

    # The final evaluation reached the tracker and the callbacks, with the card's numbers (no bookkeeping).
    stages = state["stages"]
    expected = stages["aggregator/chitchat"]["metrics"]["eval_accuracy"]
    scalars = _tensorboard_scalars(run / "runs")  # the run's own log folder (stages log under stages/)
    assert scalars["eval/final/validation_accuracy"] == pytest.approx(expected)
    assert scalars["eval/final/router/eval_accuracy"] == pytest.approx(stages["router"]["metrics"]["eval_accuracy"])
    final = [logs for logs in recorded if "eval_final/validation_accuracy" in logs]
    assert len(final) == 1 and not any("runtime" in key for key in final[0])
    card = (uploaded / "README.md").read_text()
    assert "| validation_accuracy |" in card and "eval_runtime" not in card

    # The run folder names its base relative to itself (tiny_backbone lives in it), so it can be moved.
    assert json.loads((run / "config.json").read_text())["base_model_name_or_path"] == "./backbone"
    moved = tmp_path / "moved-run"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("base"))  # without base/: ./backbone is used
    from_copy = DMoERMForSequenceClassification.from_pretrained(moved)
    torch.testing.assert_close(from_copy(input_ids=ids).logits, exported(input_ids=ids).logits, rtol=0, atol=0)

    # A rerun that trains nothing does not push again.
    from dmoerm_trl.commands.train import main

    assert main(cli_args) == 0
    assert len(commits) == 1
