"""Real multi-process training: `accelerate launch` with 2 CPU processes, DeepSpeed ZeRO-2 and ZeRO-3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from trainer_helpers import REPO, quick_args, subprocess_env


def launch(accelerate_config: str, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs" / accelerate_config),
        "--main_process_port",
        "0",
        str(REPO / "recipes" / "train_dmoerm.py"),
        *quick_args(output_dir, "--train_baseline", "false", *extra),
    ]
    return subprocess.run(
        command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900, check=False
    )


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.parametrize(
    "accelerate_config, precision",
    [("deepspeed_zero2_cpu.yaml", []), ("deepspeed_zero3_cpu.yaml", ["--bf16", "true", "--dtype", "bfloat16"])],
)
def test_two_process_deepspeed_trains_a_stage(tmp_path, accelerate_config, precision):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import dmoerm_trl  # noqa: F401

    output_dir = tmp_path / "run"
    result = launch(accelerate_config, output_dir, "--stages", "task", "--categories_to_train", "chitchat", *precision)
    assert result.returncode == 0, result.stderr[-4000:]
    entry = json.loads((output_dir / "pipeline_state.json").read_text())["stages"]["task/chitchat"]
    assert entry["status"] == "done"
    assert entry["metrics"]["eval_accuracy"] >= 0.6
    stage_dir = output_dir / "stages" / "task__chitchat"
    # the DeepSpeed engine really ran (its own checkpoint format) ...
    assert list(stage_dir.glob("checkpoint-*/global_step*"))
    # ... and the trained tensors were gathered from the shards: the task adapter moved away from LoRA's zero init
    weights = load_file(str(stage_dir / "final.safetensors"))
    lora_b = [name for name in weights if "lora_B" in name]
    assert lora_b and all(weights[name].abs().sum() > 0 for name in lora_b)
    assert all(name.startswith("task_heads.chitchat") or "chitchat__task" in name for name in weights)
    expected_dtype = torch.bfloat16 if precision else torch.float32  # bf16 + ZeRO-3: trainable tensors in bf16
    assert {tensor.dtype for tensor in weights.values()} == {expected_dtype}

    # the exported model loads in a plain process and ranks a clearly better chitchat answer higher
    model = AutoModelForSequenceClassification.from_pretrained(output_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model.set_training_stage("task", category="chitchat")
    model.eval()
    rewards = []
    for answer in ("I am sorry to hear that, that sounds hard for you. Do you want to talk about it?", "Ok."):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": "I feel tired after work."}, {"role": "assistant", "content": answer}],
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        with torch.no_grad():
            rewards.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    assert rewards[0] > rewards[1]


@pytest.mark.slow
@pytest.mark.deepspeed
def test_two_process_zero3_fine_tunes_a_whole_category_copy(tmp_path):
    """task_mode="full" (phase 1 as the paper's full fine-tune) under ZeRO-3 + bf16: the whole copy is gathered."""
    import torch

    output_dir = tmp_path / "run"
    result = launch(
        "deepspeed_zero3_cpu.yaml",
        output_dir,
        "--stages",
        "task",
        "--categories_to_train",
        "chitchat",
        "--task_mode",
        "full",
        "--bf16",
        "true",
        "--dtype",
        "bfloat16",
        "--num_train_epochs",
        "1",
        "--task_learning_rate",
        "1e-3",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((output_dir / "pipeline_state.json").read_text())["stages"]["task/chitchat"]["status"] == "done"
    weights = load_file(str(output_dir / "stages" / "task__chitchat" / "final.safetensors"))
    original = load_file(str(output_dir / "backbone" / "model.safetensors"))
    suffix = "layers.0.mlp.down_proj.weight"
    trained = next(
        v for k, v in weights.items() if k.startswith("category_backbones.chitchat.") and k.endswith(suffix)
    )
    before = next(v for k, v in original.items() if k.endswith(suffix))
    assert trained.shape == before.shape  # gathered from the shards, not a ZeRO-3 placeholder
    assert not torch.equal(trained.float(), before.float())
    exported = load_file(str(output_dir / "category_bases" / "chitchat" / "model.safetensors"))
    torch.testing.assert_close(exported[suffix].float(), trained.float())


@pytest.mark.slow
@pytest.mark.deepspeed
def test_two_process_zero3_trains_above_a_shared_trunk(tmp_path):
    """trunk_layers > 0 under ZeRO-3 + bf16: the split forward (layer list swapped per call) trains with partitioned
    parameters, and only adapters above the trunk exist and move; the router on the trunk (router_mode="trunk")
    trains its head alone."""
    import torch
    from transformers import AutoModelForSequenceClassification

    import dmoerm_trl  # noqa: F401

    output_dir = tmp_path / "run"
    result = launch(
        "deepspeed_zero3_cpu.yaml",
        output_dir,
        "--stages",
        "router,task",
        "--categories_to_train",
        "chitchat",
        "--trunk_layers",
        "1",
        "--router_mode",
        "trunk",
        "--bf16",
        "true",
        "--dtype",
        "bfloat16",
        "--num_train_epochs",
        "1",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    stages = json.loads((output_dir / "pipeline_state.json").read_text())["stages"]
    assert stages["task/chitchat"]["status"] == "done" and stages["router"]["status"] == "done"
    # The head learned under ZeRO-3 (an untrained head, logits ~0, gives ln 3 = 1.10 over 3 categories)
    assert stages["router"]["metrics"]["eval_loss"] < 1.05 and stages["router"]["metrics"]["eval_accuracy"] > 0.4
    router = load_file(str(output_dir / "stages" / "router" / "final.safetensors"))
    assert sorted(router) == ["router_head.bias", "router_head.weight"]
    weights = load_file(str(output_dir / "stages" / "task__chitchat" / "final.safetensors"))
    lora_b = [name for name in weights if "lora_B" in name]
    assert lora_b and all(".layers.1." in name and weights[name].abs().sum() > 0 for name in lora_b)
    model = AutoModelForSequenceClassification.from_pretrained(output_dir, dtype=torch.float32)
    assert model.config.trunk_layers == 1 and model.config.router_mode == "trunk"
    torch.testing.assert_close(model.router_head.weight, router["router_head.weight"].float(), rtol=0, atol=0)
