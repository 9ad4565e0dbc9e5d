"""TRL-style configs: YAML + CLI through TrlParser, defaults (the paper's recipe), validation."""

from __future__ import annotations

import pytest
from trainer_helpers import TINY_CATEGORIES, TINY_CONFIG
from trl import TrlParser

from dmoerm_trl.trainers import DMoERMDataArguments, DMoERMModelArguments, DMoERMTrainingConfig


def parse(args):
    return TrlParser((DMoERMModelArguments, DMoERMDataArguments, DMoERMTrainingConfig)).parse_args_and_config(args)


def test_yaml_config_and_cli_override(tmp_path):
    model_args, data_args, training_args = parse(
        [
            "--config",
            str(TINY_CONFIG),
            "--output_dir",
            str(tmp_path),
            "--task_learning_rate",
            "0.5",
            "--categories_to_train",
            "chitchat",
        ]
    )
    assert model_args.tiny_backbone == "llama"
    assert model_args.categories == TINY_CATEGORIES  # an inline mapping in the YAML
    assert training_args.task_learning_rate == 0.5  # the flag wins over the YAML's 3e-3
    assert training_args.capability_learning_rate == 3e-3
    assert training_args.output_dir == str(tmp_path)
    assert training_args.phase_value("aggregator", "num_train_epochs") == 8
    assert training_args.phase_value("task", "num_train_epochs") == 4  # falls back to num_train_epochs
    assert training_args.stage_kinds == ["label", "router", "task", "capability", "aggregator", "baseline"]
    assert data_args.validation_split_ratio == 0.15


def test_defaults_are_the_papers_recipe(tmp_path):
    model_args, data_args, training_args = parse(
        ["--model_name_or_path", "some/backbone", "--dataset_path", "x.jsonl", "--output_dir", str(tmp_path)]
    )
    assert (data_args.task_split_ratio, data_args.validation_split_ratio) == (0.6, 0.1)
    assert (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (32, 32, 0.05)
    assert model_args.categories == "paper"
    assert training_args.capability_learning_rate == 5e-5  # the paper's phase-2 LoRA rate
    assert training_args.load_best_model_at_end and training_args.metric_for_best_model == "eval_accuracy"
    assert training_args.early_stopping_patience == 2
    assert training_args.cache_expert_features
    assert training_args.report_to == [] or training_args.report_to == "none"


def test_categories_as_json_on_the_command_line(tmp_path):
    model_args, _, _ = parse(
        ["--tiny_backbone", "llama", "--categories", '{"qa": ["correctness"]}', "--output_dir", str(tmp_path)]
    )
    assert model_args.categories == {"qa": ["correctness"]}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--output_dir", "x"], "no backbone"),
        (["--tiny_backbone", "llama", "--output_dir", "x", "--stages", "router,phase4"], "unknown stage kind"),
        (["--tiny_backbone", "llama", "--output_dir", "x", "--task_split_ratio", "1.0"], "task_split_ratio"),
        (["--tiny_backbone", "llama", "--output_dir", "x", "--validation_split_ratio", "1.5"], "validation_split"),
    ],
)
def test_bad_values_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        parse(args)


def test_dmoerm_train_help_lists_the_phase_flags(capsys):
    from dmoerm_trl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--aggregator_learning_rate", "--capability_labels_path", "--cache_expert_features"):
        assert flag in out
    assert "--report_to" not in out and "--help-all" in out  # RewardConfig's flags: `dmoerm train --help-all`


def test_dmoerm_train_reports_a_bad_config_without_traceback(tmp_path, capsys):
    from dmoerm_trl.cli import main

    code = main(["train", "--config", str(TINY_CONFIG), "--output_dir", str(tmp_path), "--stages", "phase9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown stage kind" in err and "Traceback" not in err


def test_a_missing_backbone_folder_is_named(tmp_path, capsys):
    from dmoerm_trl.cli import main

    paper = TINY_CONFIG.parent / "paper_lora.yaml"
    code = main(
        [
            "train",
            "--config",
            str(paper),
            "--output_dir",
            str(tmp_path),
            "--model_name_or_path",
            str(tmp_path / "no-such-model"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no-such-model' is not a folder" in err and "Traceback" not in err


def test_the_paper_layout_recipe_parses_to_full_phase1(tmp_path):
    from dmoerm_trl.commands.train import parse_config

    model_args, _, training_args = parse_config(
        ["--config", str(TINY_CONFIG.parent / "paper_full.yaml"), "--output_dir", str(tmp_path)]
    )
    assert model_args.task_mode == "full" and model_args.categories == "paper"
    assert training_args.task_learning_rate == 1e-7  # the paper's phase-1 rate for the full fine-tune
    with pytest.raises((ValueError, SystemExit)):
        parse_config(["--config", str(TINY_CONFIG), "--output_dir", str(tmp_path), "--task_mode", "half"])


def test_trunk_layers_comes_from_the_recipe_and_the_flag(tmp_path):
    from dmoerm_trl.commands.train import parse_config

    paper = str(TINY_CONFIG.parent / "paper_lora.yaml")
    assert parse_config(["--config", paper, "--output_dir", str(tmp_path)])[0].trunk_layers == 0
    model_args = parse_config(["--config", paper, "--output_dir", str(tmp_path), "--trunk_layers", "22"])[0]
    assert model_args.trunk_layers == 22
