"""The fast ``--help`` of the TrlParser commands: the stored texts match the live dataclasses, ``--help`` imports no
TRL/torch, ``--help-all`` lists TRL's flags too, and the texts ship with the package."""

from __future__ import annotations

import configparser
import fnmatch
import importlib
import re
from pathlib import Path

import pytest

from dmoerm_trl.cli import SUBCOMMANDS, main
from dmoerm_trl.commands._help import HELP_DIR, own_field_names, render_own_help, stored_help

REPO = Path(__file__).resolve().parents[1]
TRL_COMMANDS = ("train", "train-baseline", "bon", "ppo", "grpo", "rloo")
# A flag of the TRL config each command extends: in --help-all, not in --help.
TRL_ONLY_FLAG = {
    "train": "--per_device_train_batch_size",
    "train-baseline": "--gradient_accumulation_steps",
    "ppo": "--num_ppo_epochs",
    "grpo": "--num_generations",
    "rloo": "--num_generations",
}


def _command(name):
    return importlib.import_module(SUBCOMMANDS[name][0]).COMMAND


def _ppo_available() -> bool:
    from dmoerm_trl.rl.ppo import PPOUnavailableError, require_ppo

    try:
        require_ppo()
    except PPOUnavailableError:
        return False
    return True


def _help_output(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0, argv
    return capsys.readouterr().out


@pytest.mark.parametrize("name", TRL_COMMANDS)
def test_stored_help_matches_the_live_dataclasses(name):
    command = _command(name)
    if name == "ppo" and not _ppo_available():  # no PPOConfig in this TRL: the text was rendered on trl 1.12
        from dmoerm_trl.rl.ppo import PPOUnavailableError

        with pytest.raises(PPOUnavailableError):
            render_own_help(command)
        assert "trl>=1.10,<1.13" in stored_help(command.prog)
        return
    assert render_own_help(command) == stored_help(command.prog), (
        f"dmoerm_trl/commands/help/{name}.txt is out of date: run `python -m dmoerm_trl.commands._help`"
    )


@pytest.mark.parametrize("name", TRL_COMMANDS)
def test_help_lists_every_own_flag_and_help_all_adds_trl_flags(name, capsys):
    text = _help_output([name, "--help"], capsys)
    assert text == stored_help(f"dmoerm {name}")
    assert text.startswith(f"usage: dmoerm {name} [-h] [--help-all] [--config FILE]")
    if name == "ppo" and not _ppo_available():
        from dmoerm_trl.rl.recipe_args import RLScriptArguments

        own_classes = [RLScriptArguments]
    else:
        own_classes = list(_command(name).dataclasses())
    for dataclass_type in own_classes:
        for field_name in own_field_names(dataclass_type):
            assert f"  --{field_name} " in text or f"  --{field_name}\n" in text, (name, field_name)
    trl_flag = TRL_ONLY_FLAG.get(name)
    if trl_flag is None:  # bon: every flag is its own
        assert "--help-all" in text
        return
    assert trl_flag not in text
    if name == "ppo" and not _ppo_available():
        assert main([name, "--help-all"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "trl>=1.10,<1.13" in err
        return
    full = _help_output([name, "--help-all"], capsys)
    assert trl_flag in full and "--output_dir" in full


def test_short_help_comes_first_whatever_else_is_given(capsys):
    short = stored_help("dmoerm train")
    assert _help_output(["train", "-h"], capsys) == short
    assert _help_output(["train", "--config", "missing.yaml", "--lora_r", "4", "--help"], capsys) == short


def test_own_fields_are_the_dmoerm_declared_ones():
    from dmoerm_trl.trainers.training_config import DMoERMTrainingConfig

    own = own_field_names(DMoERMTrainingConfig)
    assert {"aggregator_learning_rate", "output_dir", "num_train_epochs"} <= own  # declared or re-declared here
    assert "per_device_train_batch_size" not in own and "report_to" not in own  # inherited from TRL/transformers


def test_help_texts_ship_with_the_package():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in config["options.package_data"]["dmoerm_trl"].split(",")]
    package = REPO / "dmoerm_trl"
    data_files = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    ]
    assert any(path.parent == HELP_DIR for path in package.rglob("*.txt"))
    missing = [path for path in data_files if not any(fnmatch.fnmatch(path, pattern) for pattern in patterns)]
    assert not missing, f"not in setup.cfg [options.package_data]: {missing}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_breaks_no_hyphenated_word_and_says_what_no_flags_do(name, capsys):
    text = _help_output([name, "--help"], capsys)
    assert not re.search(r"\w-\n", text), "a line ends inside a hyphenated word (--help-all, held-out ...)"
    if name == "train":
        block = text[text.index("  --no_route_unlabeled") :].split("\n  --")[0]
        assert "Set route_unlabeled to false." in block and "default" not in block
