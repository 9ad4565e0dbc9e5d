"""accelerate_configs/: every file parses; every DeepSpeed file passes DeepSpeed's own config parser."""

from __future__ import annotations

import json

import pytest
from trainer_helpers import REPO

from dmoerm_trl.trainers.distributed import cast_trainable_parameters_for_deepspeed, validate_deepspeed_config

CONFIGS = REPO / "accelerate_configs"
DEEPSPEED = sorted(p.name for p in CONFIGS.glob("deepspeed_*.yaml"))
EXPECTED = {
    "single_gpu.yaml",
    "multi_gpu.yaml",
    "deepspeed_zero2.yaml",
    "deepspeed_zero3.yaml",
    "deepspeed_zero3_offload.yaml",
    "cpu_multi_process.yaml",
    "deepspeed_zero2_cpu.yaml",
    "deepspeed_zero3_cpu.yaml",
}


def test_the_config_set_is_complete():
    assert EXPECTED <= {p.name for p in CONFIGS.glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_parses_every_config(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert config.num_processes >= 1
    if name.endswith("_cpu.yaml") or name == "cpu_multi_process.yaml":
        assert config.use_cpu and config.num_processes == 2


@pytest.mark.parametrize("name", DEEPSPEED)
def test_deepspeed_parser_accepts_every_deepspeed_config(name):
    config = validate_deepspeed_config(CONFIGS / name, per_device_train_batch_size=4, hidden_size=64)
    stage = int(name.split("zero")[1][0])
    assert config["zero_optimization"]["stage"] == stage
    assert config["train_micro_batch_size_per_gpu"] == 4  # "auto" filled from the TrainingArguments
    if stage == 3:
        # stage checkpoints gather the sharded trainable tensors at save time
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    if "offload" in name:
        assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert config.get("bf16", {}).get("enabled", False) == ("cpu" not in name)


def test_a_misspelled_zero_key_is_rejected(tmp_path):
    good = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3, "offload_param": {}}}
    bad = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3, "offload_parm": {}}}
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert validate_deepspeed_config(tmp_path / "good.json")["zero_optimization"]["stage"] == 3
    with pytest.raises(ValueError, match="(?s)bad.json.*offload_parm"):
        validate_deepspeed_config(tmp_path / "bad.json")


def test_a_non_deepspeed_config_is_named():
    with pytest.raises(ValueError, match="multi_gpu.yaml: not a DeepSpeed config"):
        validate_deepspeed_config(CONFIGS / "multi_gpu.yaml")


class _ZeroArgs:
    def __init__(self, stage, bf16):
        from types import SimpleNamespace

        self.bf16 = bf16
        self.deepspeed_plugin = SimpleNamespace(zero_stage=stage)


@pytest.mark.parametrize("stage, bf16, expect_cast", [(3, True, True), (2, True, False), (3, False, False)])
def test_bf16_zero3_dtype_rule(stage, bf16, expect_cast):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)).to(torch.bfloat16)
    model[1].float()  # a fp32 trainable head on a bf16 base, as PEFT/new heads produce
    model[0].requires_grad_(False)
    cast = cast_trainable_parameters_for_deepspeed(model, _ZeroArgs(stage, bf16))
    assert (cast == 2) == expect_cast
    assert (model[1].weight.dtype == torch.bfloat16) == expect_cast
    assert model[0].weight.dtype == torch.bfloat16
