"""Shared constants and helpers of the trainer tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
DATA = FIXTURES / "mtmc_tiny.jsonl"
LABELS = FIXTURES / "capability_labels_tiny.jsonl"
TINY_CONFIG = REPO / "recipes" / "configs" / "tiny_cpu.yaml"
TINY_CATEGORIES = {
    "objective_qa": ["correctness", "reasoning_ability"],
    "chitchat": ["empathy_ability", "proactivity"],
    "roleplay": ["character_setting_and_emotional_investment", "conversational_sense"],
}


def quick_args(output_dir, *extra: str) -> list[str]:
    """CLI args of a fast tiny run: the shipped tiny config with fewer epochs (every stage still runs)."""
    return [
        "--config",
        str(TINY_CONFIG),
        "--output_dir",
        str(output_dir),
        "--dataset_path",
        str(DATA),
        "--capability_labels_path",
        str(LABELS),
        "--num_train_epochs",
        "2",
        "--aggregator_num_train_epochs",
        "3",
        "--logging_steps",
        "50",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def train_one_category(output_dir, category: str, capability: str, *extra: str) -> list[str]:
    """Run the pipeline in-process (router + one category's three phases, no baseline), check each stage
    finished, and return the CLI args used (to rerun the same job)."""
    import json

    from dmoerm_trl.commands.train import main as train_main

    args = (
        "--categories_to_train",
        category,
        "--num_train_epochs",
        "1",
        "--aggregator_num_train_epochs",
        "2",
        "--train_baseline",
        "false",
        *extra,
    )
    cli_args = quick_args(output_dir, *args)
    assert train_main(cli_args) == 0
    stages = json.loads((Path(output_dir) / "pipeline_state.json").read_text())["stages"]
    for name in ("router", f"task/{category}", f"capability/{category}/{capability}", f"aggregator/{category}"):
        assert stages[name]["status"] == "done", (name, stages[name])
    return cli_args


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "WANDB_DISABLED": "true",
        }
    )
    return env


def tiny_dmoerm(backbone_path, tokenizer, lora_r: int = 8):
    from dmoerm_trl import DMoERMForSequenceClassification

    return DMoERMForSequenceClassification.from_backbone(
        backbone_path, TINY_CATEGORIES, tokenizer=tokenizer, lora_r=lora_r, lora_alpha=2 * lora_r
    )


def stage_args(output_dir, **overrides):
    """Training arguments of a unit-test stage: CPU, no eval unless asked, quiet."""
    from dmoerm_trl.trainers import DMoERMTrainingConfig

    values = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "learning_rate": 3e-3,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 32,
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
    }
    values.update(overrides)
    return DMoERMTrainingConfig(**values)


def tokenized_data(tokenizer):
    """(human pairs, capability labels) of the shipped tiny data, tokenized for the tiny tokenizer."""
    from dmoerm_trl.data import load_capability_labels, load_preference_pairs
    from dmoerm_trl.data.tokenize import tokenize_pairs

    pairs = tokenize_pairs(load_preference_pairs(DATA), tokenizer, 256, "pairs")
    labels = tokenize_pairs(load_capability_labels(LABELS), tokenizer, 256, "labels")
    return pairs, labels
