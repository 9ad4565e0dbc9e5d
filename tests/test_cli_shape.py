"""One CLI shape: the TrlParser commands share one class, every flag takes both spellings (help shows one),
``dmoerm --help`` imports no torch, ``dmoerm score --output`` with id passthrough, optional extras, plots that leave
matplotlib's backend alone."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dmoerm_trl.cli import SUBCOMMANDS, build_parser, main

TRL_COMMANDS = ("train", "train-baseline", "bon", "ppo", "grpo", "rloo")
ARGPARSE_COMMANDS = [name for name in SUBCOMMANDS if name not in TRL_COMMANDS]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_trl_commands_are_one_class():
    from dmoerm_trl.commands._trl_command import TrlCommand

    for name in TRL_COMMANDS:
        module = importlib.import_module(SUBCOMMANDS[name][0])
        assert isinstance(module.COMMAND, TrlCommand), name
        assert module.COMMAND.prog == f"dmoerm {name}"
        assert module.main == module.COMMAND.main and module.run == module.COMMAND.run


@pytest.mark.parametrize("command", ["train", "bon", "grpo", "rloo"])
def test_trl_command_bad_flag_is_one_line(command, capsys):
    try:
        code = main([command, "--no_such_flag", "1"])
    except SystemExit as exit_info:  # argparse's own error (TrlParser), or a dataclass check that comes first
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"dmoerm {command}: error:"), err


def test_trl_command_user_error_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: [unclosed\n")
    for command in ("train", "train-baseline", "bon"):
        assert main([command, "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"dmoerm {command}: error:"), err


def test_trl_flags_take_both_spellings_help_shows_one():
    from dmoerm_trl.commands.train import COMMAND, parse_config

    under = parse_config(["--model_name_or_path", "m", "--output_dir", "o", "--max_length", "77"])
    dash = parse_config(["--model-name-or-path", "m", "--output-dir", "o", "--max-length", "77"])
    assert (
        under[2].max_length == dash[2].max_length == 77 and under[0].model_name_or_path == dash[0].model_name_or_path
    )
    text = COMMAND.build_parser().format_help()
    assert "--max_length MAX_LENGTH" in text and "--max-length" not in text and "--learning_rate" in text


@pytest.mark.parametrize("name", ARGPARSE_COMMANDS)
def test_argparse_flags_take_both_spellings_help_shows_one(name):
    parser = _subparsers()[name]
    help_text = parser.format_help()
    checked = 0
    for action in parser._actions:
        for option in action.option_strings:
            body = option[2:]
            if option.startswith("--") and ("_" in body or "-" in body):
                assert "--" + body.replace("-", "_") in action.option_strings, option
                assert "--" + body.replace("_", "-") in action.option_strings, option
                checked += 1
    for action in parser._actions:  # help shows the underscore spelling only
        dashed = [o for o in action.option_strings if o.startswith("--") and "-" in o[2:]]
        for option in dashed:
            assert f"{option} " not in help_text and f"{option}," not in help_text and f"[{option}" not in help_text
    if name in ("score", "label", "push", "eval"):
        assert checked > 0  # these have multi-word flags


def test_old_dash_spelling_still_parses():
    parser = build_parser()
    args = parser.parse_args(["score", "--model", "m", "--input", "i", "--batch-size", "3"])
    assert args.batch_size == 3
    args = parser.parse_args(["score", "--model", "m", "--input", "i", "--batch_size", "4"])
    assert args.batch_size == 4
    for flag, expected in (
        ("--skip-invalid", True),
        ("--skip_invalid", True),
        ("--no-skip-invalid", False),
        ("--no_skip_invalid", False),
    ):
        args = parser.parse_args(["label", flag])
        assert args.skip_invalid is expected, flag


def test_help_imports_no_torch():
    commands = ", ".join(repr(c) for c in SUBCOMMANDS)  # the TrlParser commands' --help is a stored text
    result = _python(
        "import sys, contextlib, io\n"
        "from dmoerm_trl.cli import main\n"
        f"for argv in [['--help']] + [[c, '--help'] for c in [{commands}]]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (argv, e.code)\n"
        "    assert 'usage' in out.getvalue(), argv\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'openai') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_is_light_and_still_registers_the_auto_classes():
    result = _python(
        "import sys\n"
        "import dmoerm_trl\n"
        "assert 'torch' not in sys.modules\n"
        "import transformers.trainer_utils  # imports modeling_auto while it loads (circular-import trap)\n"
        "from transformers import AutoConfig, AutoModelForSequenceClassification as A\n"
        "from dmoerm_trl.rl.ensemble import RewardEnsembleConfig\n"
        "print(type(AutoConfig.for_model('dmoerm')).__name__, A._model_mapping[dmoerm_trl.DMoERMConfig].__name__,\n"
        "      A._model_mapping[RewardEnsembleConfig].__name__)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["DMoERMConfig", "DMoERMForSequenceClassification", "RewardEnsemble"]


def test_auto_classes_load_a_saved_dmoerm_after_import(tiny_llama_path, tmp_path):
    output = tmp_path / "model"
    assert main(["example", "--backbone", tiny_llama_path, "--output", str(output)]) == 0
    result = _python(
        "import dmoerm_trl\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"model = AutoModelForSequenceClassification.from_pretrained({str(output)!r})\n"
        "print(type(model).__name__)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "DMoERMForSequenceClassification"

    # dmoerm score --output: the same rows as stdout, written atomically, ids copied through
    conversations = tmp_path / "in.jsonl"
    # plain texts have no prompt/response boundary for the router: they name their category
    from dmoerm_trl import DMoERMConfig

    category = DMoERMConfig.from_pretrained(output).category_names[0]
    conversations.write_text(
        json.dumps(
            {"id": "a-1", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
        )
        + "\n"
        + json.dumps({"text": "no id here", "category": category})
        + "\n"
        + json.dumps({"id": 7, "text": "numeric id", "category": category})
        + "\n"
    )
    scores = tmp_path / "out" / "scores.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmoerm_trl.cli",
            "score",
            "--model",
            str(output),
            "--input",
            str(conversations),
            "--tokenizer",
            tiny_llama_path,
            "--output",
            str(scores),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.strip().splitlines()]
    written = [json.loads(line) for line in scores.read_text().splitlines()]
    assert printed == written and len(written) == 3
    assert [row.get("id") for row in written] == ["a-1", None, 7] and "id" not in written[1]
    assert all("reward" in row for row in written)
    assert not [p for p in scores.parent.iterdir() if p.name != "scores.jsonl"]  # no temp file left


def test_score_output_that_is_a_folder_is_one_line(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "x"}\n')
    assert main(["score", "--model", str(model), "--input", str(data), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--output" in err and "is a folder" in err


def test_missing_openai_names_the_label_extra():
    result = _python(
        "import sys\n"
        "sys.modules['openai'] = None  # as if `pip install dmoerm-trl` without [label]\n"
        "from dmoerm_trl.utils.extras import require_openai, MissingExtraError\n"
        "try:\n"
        "    require_openai()\n"
        "except MissingExtraError as err:\n"
        "    assert isinstance(err, ValueError) and isinstance(err, ImportError)\n"
        "    print(err)\n"
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "dmoerm-trl[label]"' in result.stdout


def test_setup_cfg_extras():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parents[1] / "setup.cfg")
    requires = cfg["options"]["install_requires"]
    extras = cfg["options.extras_require"]
    assert "openai" not in requires and "openai" in extras["label"] and "openai" in extras["dev"]
    assert "ruff" in extras["dev"]
    import transformers

    floor = next(line.split(">=")[1] for line in requires.split("\n") if line.strip().startswith("transformers"))
    tested = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    assert tuple(int(x) for x in floor.split(".")[:2]) <= tested  # the floor is not above what this venv runs
    setup_sh = (Path(__file__).parents[1] / "scripts" / "setup.sh").read_text()
    assert setup_sh.count("label") >= 2
    assert 'pins="transformers==$floor"' in setup_sh  # the trl 1.12 venv (CI's main run) is set up on the floor
    import trl

    if trl.__version__.startswith("1.12."):
        assert tuple(int(x) for x in floor.split(".")[:2]) == tested, "the trl 1.12 venv must run the floor"


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    root = Path(__file__).parents[1]
    result = _python(
        "import importlib.util, math, sys\n"
        "from pathlib import Path\n"
        "import matplotlib\n"
        "matplotlib.use('pdf')\n"
        "from dmoerm_trl.rl.overoptimization import bon_kl, plot_overoptimization\n"
        "from dmoerm_trl.demo.report import plot_accuracy\n"
        f"out = Path({str(tmp_path)!r})\n"
        "rows = [dict(source='bon', proxy=p, n=n, step=None, kl=bon_kl(n), sqrt_kl=math.sqrt(bon_kl(n)),\n"
        "             proxy_reward=math.sqrt(bon_kl(n)), gold_reward=0.5 * math.sqrt(bon_kl(n)), num_samples=4)\n"
        "        for p in ('a', 'b') for n in (1, 2, 4, 8, 16)]\n"
        "plot_overoptimization(rows, out / 'o.png')\n"
        "gold = {'dmoerm': {'overall': 0.7, 'per_category': {'x': 0.6}},\n"
        "        'baseline': {'overall': 0.6, 'per_category': {'x': 0.5}}}\n"
        "plot_accuracy({'evaluation': {'gold_test': gold}, 'data': {'human_gold_agreement': 0.8}}, out / 'd.png')\n"
        f"spec = importlib.util.spec_from_file_location('fr', {str(root / 'benchmarks' / 'fidelity_report.py')!r})\n"
        "fr = importlib.util.module_from_spec(spec); spec.loader.exec_module(fr)\n"
        "fr.plot_accuracy({'accuracy': {'m': {'per_category': {'x': 0.6}, 'overall': 0.6}}, 'categories': ['x'],\n"
        "                  'data': {'human_gold_agreement': 0.8}}, out / 'f.png')\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pdf", "False"]
    for name in ("o.png", "d.png", "f.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
