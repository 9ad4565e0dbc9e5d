"""The pipeline with task_mode="full" (the paper's layout): phase 1 fine-tunes a base copy per category."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from trainer_helpers import train_one_category

from dmoerm_trl.commands.train import main as train_main


def test_full_phase1_fine_tunes_the_category_copy_and_experts_build_on_it(tmp_path, capsys, one_thread):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import dmoerm_trl  # noqa: F401

    output_dir = tmp_path / "run"
    extra = ("--task_mode", "full", "--task_learning_rate", "1e-3")
    cli_args = train_one_category(output_dir, "objective_qa", "correctness", *extra)

    # Phase 1 trained every weight of objective_qa's copy: its stage file holds the whole base + the task head
    task_weights = load_file(output_dir / "stages" / "task__objective_qa" / "final.safetensors")
    assert any(k.startswith("category_backbones.objective_qa.") and "mlp.down_proj" in k for k in task_weights)
    assert not any(".lora_" in k for k in task_weights)
    # ... while an expert trained only its LoRA adapter and value head
    expert_weights = load_file(output_dir / "stages" / "capability__objective_qa__correctness" / "final.safetensors")
    assert expert_weights and all(".lora_" in k or k.startswith("value_heads.") for k in expert_weights)

    # The exported folder holds the fine-tuned copies; objective_qa's differs from the original base, chitchat's
    # (not trained in this run) does not.
    original = load_file(Path(output_dir) / "backbone" / "model.safetensors")
    trained = load_file(output_dir / "category_bases" / "objective_qa" / "model.safetensors")
    untouched = load_file(output_dir / "category_bases" / "chitchat" / "model.safetensors")
    key = "layers.0.mlp.down_proj.weight"
    original_key = next(k for k in original if k.endswith(key))
    assert not torch.equal(trained[key], original[original_key])
    assert torch.equal(untouched[key], original[original_key])

    model = AutoModelForSequenceClassification.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert model.config.task_mode == "full"
    rewards = model.compute_rewards(
        [[{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "It is 7."}]], tokenizer
    )
    assert len(rewards) == 1 and isinstance(rewards[0]["reward"], float)

    # A rerun loads the finished stages (full copy included) and trains nothing
    assert train_main(cli_args) == 0
    assert json.loads((output_dir / "training_summary.json").read_text())["ran_this_time"] == []
    again = load_file(output_dir / "category_bases" / "objective_qa" / "model.safetensors")
    assert torch.equal(again[key], trained[key])
