"""A table of user mistakes: each gets one line naming what is wrong (CLI: on stderr, exit code 2, no traceback;
Python API: an exception of the documented type whose message names it). Tiny models only; CLI cases run in-process
through ``dmoerm_trl.cli.main`` (a few through a real subprocess, to see what a user sees)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmoerm_trl.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
MTMC = str(FIXTURES / "mtmc_tiny.jsonl")


class Files:
    """Paths of the tiny assets and bad files every case is built from."""

    def __init__(self, root: Path, llama: str):
        self.root, self.llama = root, llama
        self.model = str(root / "model")
        self.missing = str(root / "does-not-exist")
        self.missing_file = str(root / "does-not-exist.jsonl")
        self.good = self.write("good.jsonl", json.dumps({"text": "Q: 2+2? A: 4"}) + "\n")
        self.prompts = self.write("prompts.jsonl", json.dumps({"prompt": "Say hi."}) + "\n")

    @property
    def chat(self) -> str:
        return self.write(
            "chat.jsonl",
            messages_line([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
        )

    def tokenizer_without_template(self) -> str:
        from transformers import AutoTokenizer

        folder = self.root / "tokenizer-without-template"
        if not folder.exists():
            tokenizer = AutoTokenizer.from_pretrained(self.model)
            tokenizer.chat_template = None
            tokenizer.save_pretrained(folder)
            (folder / "chat_template.jinja").unlink(missing_ok=True)
        return str(folder)

    def folder(self, name: str) -> str:
        """A folder that holds a file but is not a saved model."""
        path = self.root / name
        path.mkdir(exist_ok=True)
        (path / "notes.txt").write_text("not a model", encoding="utf-8")
        return str(path)

    def write(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def corrupt_copy(self, name: str, relative: str) -> str:
        """A copy of the saved model with ``relative`` cut to half its size (an interrupted copy or download)."""
        folder = self.root / name
        if not folder.exists():
            shutil.copytree(self.model, folder)
            target = folder / relative
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        return str(folder)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_llama_path, tiny_tokenizer):
    from dmoerm_trl import DMoERMForSequenceClassification

    root = tmp_path_factory.mktemp("bad-inputs")
    model = DMoERMForSequenceClassification.from_backbone(
        tiny_llama_path, {"objective_qa": ["correctness", "logic"], "chitchat": ["empathy"]}, tokenizer=tiny_tokenizer
    )
    model.save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    return Files(root, tiny_llama_path)


def messages_line(messages) -> str:
    return json.dumps({"messages": messages}) + "\n"


# id -> (argv built from the files, text the one error line must contain)
CLI_CASES = {
    # dmoerm score
    "score-missing-model": (lambda f: ["score", "--model", f.missing, "--input", f.good], "--model"),
    "score-model-is-a-file": (lambda f: ["score", "--model", f.good, "--input", f.good], "is a file, not a model"),
    "score-missing-input": (lambda f: ["score", "--model", f.model, "--input", f.missing_file], "--input"),
    "score-input-is-a-folder": (lambda f: ["score", "--model", f.model, "--input", str(f.root)], "is a folder"),
    "score-not-json": (
        lambda f: ["score", "--model", f.model, "--input", f.write("nj.jsonl", '{"text": "ok"}\n{oops\n')],
        "nj.jsonl, line 2: not valid JSON",
    ),
    "score-missing-field": (
        lambda f: ["score", "--model", f.model, "--input", f.write("mf.jsonl", '{"prompt": "x"}\n')],
        "mf.jsonl, line 1: needs a `messages` list or a `text` string",
    ),
    "score-json-array-line": (
        lambda f: ["score", "--model", f.model, "--input", f.write("arr.jsonl", '["text"]\n')],
        "arr.jsonl, line 1: needs a `messages` list",
    ),
    "score-text-is-a-number": (
        lambda f: ["score", "--model", f.model, "--input", f.write("t5.jsonl", '{"text": 5}\n')],
        "t5.jsonl, line 1: a conversation must be a string",
    ),
    "score-not-utf8": (
        lambda f: ["score", "--model", f.model, "--input", f.write("latin1.jsonl", b'{"text": "caf\xe9"}\n')],
        "latin1.jsonl, line 1: not UTF-8",
    ),
    "score-empty-text": (
        lambda f: ["score", "--model", f.model, "--input", f.write("et.jsonl", '{"text": "  "}\n')],
        "et.jsonl, line 1: the text is empty",
    ),
    "score-empty-messages": (
        lambda f: ["score", "--model", f.model, "--input", f.write("em.jsonl", messages_line([]))],
        "em.jsonl, line 1: `messages` is empty",
    ),
    "score-message-without-role": (
        lambda f: ["score", "--model", f.model, "--input", f.write("nr.jsonl", messages_line([{"content": "hi"}]))],
        "nr.jsonl, line 1: message 0 must be",
    ),
    "score-content-not-a-string": (
        lambda f: [
            "score",
            "--model",
            f.model,
            "--input",
            f.write("cn.jsonl", messages_line([{"role": "user", "content": ["hi"]}])),
        ],
        "cn.jsonl, line 1: message 0 `content` must be a string",
    ),
    "score-messages-end-with-the-user": (
        lambda f: [
            "score",
            "--model",
            f.model,
            "--input",
            f.write("eu.jsonl", messages_line([{"role": "user", "content": "hi"}])),
        ],
        "eu.jsonl, line 1: the last message is the user's, but a reward scores a response",
    ),
    "score-tokenizer-without-chat-template": (
        lambda f: ["score", "--model", f.model, "--tokenizer", f.tokenizer_without_template(), "--input", f.chat],
        "chat.jsonl, line 1: `messages` need a chat template, but the tokenizer",
    ),
    "score-unknown-hub-id": (
        lambda f: ["score", "--model", "someorg/no-such-reward-model", "--input", f.good],
        "--model someorg/no-such-reward-model: cannot be loaded",
    ),
    "score-empty-file": (
        lambda f: ["score", "--model", f.model, "--input", f.write("empty.jsonl", "\n\n")],
        "has no conversations",
    ),
    "score-batch-size-0": (
        lambda f: ["score", "--model", f.model, "--input", f.good, "--batch-size", "0"],
        "--batch-size: must be at least 1",
    ),
    "score-batch-size-not-a-number": (
        lambda f: ["score", "--model", f.model, "--input", f.good, "--batch-size", "many"],
        "--batch-size: 'many' is not a whole number",
    ),
    "score-truncated-heads": (
        lambda f: ["score", "--model", f.corrupt_copy("cut-heads", "dmoerm_heads.safetensors"), "--input", f.good],
        "dmoerm_heads.safetensors is not a readable safetensors file",
    ),
    "score-truncated-adapter": (
        lambda f: [
            "score",
            "--model",
            f.corrupt_copy("cut-adapter", "adapters/router/adapter_model.safetensors"),
            "--input",
            f.good,
        ],
        "adapter_model.safetensors is not a readable safetensors file",
    ),
    # dmoerm info
    "info-not-a-model-folder": (lambda f: ["info", str(f.root)], "not a saved DMoERM"),
    "info-truncated-heads": (
        lambda f: ["info", f.corrupt_copy("cut-heads", "dmoerm_heads.safetensors")],
        "dmoerm_heads.safetensors is not a readable safetensors file",
    ),
    "info-broken-config-json": (
        lambda f: ["info", f.corrupt_copy("cut-config", "config.json")],
        "config.json",
    ),
    # dmoerm eval
    "eval-truncated-heads": (
        lambda f: [
            "eval",
            "--model",
            f.corrupt_copy("cut-heads", "dmoerm_heads.safetensors"),
            "--data",
            MTMC,
            "--output",
            str(f.root / "eval-a"),
        ],
        "dmoerm_heads.safetensors is not a readable safetensors file",
    ),
    "eval-output-is-a-file": (
        lambda f: ["eval", "--model", f.model, "--data", MTMC, "--output", f.good],
        "--output",
    ),
    "eval-missing-data": (
        lambda f: ["eval", "--model", f.model, "--data", f.missing_file, "--output", str(f.root / "eval-b")],
        "does-not-exist.jsonl: no such file",
    ),
    "eval-missing-model": (
        lambda f: ["eval", "--model", f.missing, "--data", MTMC, "--output", str(f.root / "eval-c")],
        "does-not-exist",
    ),
    "eval-batch-size-0": (
        lambda f: ["eval", "--model", f.model, "--data", MTMC, "--batch-size", "0"],
        "--batch-size: must be at least 1",
    ),
    "eval-max-length-negative": (
        lambda f: ["eval", "--model", f.model, "--data", MTMC, "--max-length", "-5"],
        "--max-length: must be at least 1",
    ),
    "eval-missing-labels": (
        lambda f: ["eval", "--model", f.model, "--data", MTMC, "--labels", f.missing_file],
        "--labels",
    ),
    "eval-missing-baseline": (
        lambda f: ["eval", "--model", f.model, "--data", MTMC, "--baseline", f.missing],
        "--baseline",
    ),
    "eval-model-is-a-causal-lm": (
        lambda f: ["eval", "--model", f.llama, "--data", MTMC, "--output", str(f.root / "eval-lm")],
        "is not a reward model: score.weight would be newly initialized",
    ),
    "eval-threads-negative": (
        lambda f: ["eval", "--model", f.model, "--data", MTMC, "--threads", "-1"],
        "--threads: must be at least 1",
    ),
    # dmoerm label
    "label-output-is-a-file": (
        lambda f: ["label", "--data", MTMC, "--model", "judge", "--output", f.good],
        "--output",
    ),
    "label-concurrency-lots": (
        lambda f: [
            "label",
            "--config",
            f.write("lots.yaml", f"concurrency: lots\ndata: {MTMC}\nmodel: judge\n"),
            "--output",
            str(f.root / "labels-a"),
        ],
        "concurrency='lots': must be an int",
    ),
    "label-broken-yaml": (
        lambda f: ["label", "--config", f.write("broken-label.yaml", "data: [unclosed\n")],
        "broken-label.yaml",
    ),
    "label-config-missing": (lambda f: ["label", "--config", f.missing_file], "--config"),
    "label-config-not-a-mapping": (
        lambda f: ["label", "--config", f.write("list.yaml", "- data\n- model\n")],
        "must be a YAML mapping",
    ),
    "label-missing-options": (lambda f: ["label", "--output", str(f.root / "labels-b")], "--data, --model"),
    "label-missing-data": (
        lambda f: ["label", "--data", f.missing_file, "--model", "judge", "--output", str(f.root / "labels-c")],
        "does-not-exist.jsonl: no such file",
    ),
    "label-mode-bogus": (lambda f: ["label", "--mode", "bogus"], "argument --mode: invalid choice: 'bogus'"),
    # dmoerm train / train-baseline
    "train-broken-yaml": (
        lambda f: ["train", "--config", f.write("broken-train.yaml", "output_dir: [unclosed\n")],
        "broken-train.yaml",
    ),
    "train-config-missing": (lambda f: ["train", "--config", f.missing_file], "does-not-exist.jsonl"),
    "train-unknown-flag": (
        lambda f: ["train", "--tiny_backbone", "llama", "--output_dir", str(f.root / "t"), "--no_such_flag", "3"],
        "--no_such_flag",
    ),
    "train-unknown-flag-says-so": (
        lambda f: ["train", "--tiny_backbone", "llama", "--output_dir", str(f.root / "t"), "--lora_rr", "3"],
        "unknown flag(s) --lora_rr; `dmoerm train --help` lists the flags it takes",
    ),
    "train-unknown-yaml-key": (
        lambda f: [
            "train",
            "--config",
            f.write("typo.yaml", "tiny_backbone: llama\nlora_rr: 4\n"),
            "--output_dir",
            str(f.root / "t"),
        ],
        "typo.yaml: unknown key(s) lora_rr",
    ),
    "train-output-dir-is-a-file": (
        lambda f: ["train", "--tiny_backbone", "llama", "--output_dir", f.good],
        "good.jsonl is a file, not a folder",
    ),
    "train-baseline-output-dir-is-a-file": (
        lambda f: ["train-baseline", "--tiny_backbone", "llama", "--output_dir", f.good],
        "--output_dir",
    ),
    "train-learning-rate-not-a-number": (
        lambda f: ["train", "--output_dir", str(f.root / "t"), "--learning_rate", "fast"],
        "invalid float value: 'fast'",
    ),
    "train-baseline-broken-yaml": (
        lambda f: ["train-baseline", "--config", f.write("broken-baseline.yaml", "a: [\n")],
        "broken-baseline.yaml",
    ),
    # dmoerm bon / grpo
    "bon-missing-policy": (
        lambda f: [
            "bon",
            "--policy_model_path",
            f.missing,
            "--reward_model_paths",
            f.model,
            "--dataset_path",
            f.prompts,
            "--output_dir",
            str(f.root / "bon"),
        ],
        "policy_model_path",
    ),
    "bon-missing-prompts": (
        lambda f: [
            "bon",
            "--policy_model_path",
            f.llama,
            "--reward_model_paths",
            f.model,
            "--dataset_path",
            f.missing_file,
            "--max_prompt_length",
            "32",
            "--max_new_tokens",
            "8",
            "--output_dir",
            str(f.root / "bon"),
        ],
        "prompt file",
    ),
    "bon-missing-reward-model": (
        lambda f: [
            "bon",
            "--policy_model_path",
            f.llama,
            "--reward_model_paths",
            f.missing,
            "--dataset_path",
            f.prompts,
            "--max_prompt_length",
            "32",
            "--max_new_tokens",
            "8",
            "--output_dir",
            str(f.root / "b"),
        ],
        "reward_model_paths",
    ),
    "bon-n-not-a-number": (lambda f: ["bon", "--n", "lots"], "argument --n: invalid int value: 'lots'"),
    # prompt files and reward models a newcomer gets wrong (each ended in a traceback, a non-naming message or a run
    # on a random reward head before)
    "bon-empty-prompts-file": (
        lambda f: bon_flags(f, dataset_path=f.write("no-prompts.jsonl", "")),
        "no-prompts.jsonl holds no records",
    ),
    "bon-prompts-line-not-json": (
        lambda f: bon_flags(f, dataset_path=f.write("broken-prompts.jsonl", '{"prompt": "hi"}\n{"prompt": "x"\n')),
        "broken-prompts.jsonl, line 2: not valid JSON",
    ),
    "bon-prompt-not-text": (
        lambda f: bon_flags(f, dataset_path=f.write("number-prompt.jsonl", '{"prompt": "hi"}\n{"prompt": 5}\n')),
        "number-prompt.jsonl, line 2: 'prompt' is not text but int",
    ),
    "bon-prompt-message-without-content": (
        lambda f: bon_flags(
            f, dataset_path=f.write("no-content.jsonl", json.dumps({"prompt": [{"role": "user"}]}) + "\n")
        ),
        "no-content.jsonl, line 1: 'prompt' message 0 is not a",
    ),
    "bon-reward-model-is-a-causal-lm": (
        lambda f: bon_flags(f, reward_model_paths=f.llama),
        "is not a reward model (LlamaForCausalLM has no sequence-classification head",
    ),
    "bon-reward-model-folder-without-config": (
        lambda f: bon_flags(f, reward_model_paths=f.folder("not-a-model")),
        "has no config.json",
    ),
    "bon-reward-model-neither-folder-nor-cached-hub-id": (
        lambda f: bon_flags(f, reward_model_paths="runs/my-dmoerm"),
        "reward_model_paths runs/my-dmoerm: cannot be loaded",
    ),
    "bon-gold-model-is-a-causal-lm": (
        lambda f: bon_flags(f, gold_model_path=f.llama),
        "gold_model_path",
    ),
    "bon-ns-0": (lambda f: bon_flags(f, ns="0"), "ns must be whole numbers >= 1"),
    "bon-num-prompts-0": (lambda f: bon_flags(f, num_prompts="0"), "num_prompts must be >= 1"),
    "bon-ensemble-mode-bogus": (
        lambda f: bon_flags(f, ensemble_mode="best"),
        "ensemble_mode must be mean, wco or uwo",
    ),
    "grpo-missing-policy": (
        lambda f: [
            "grpo",
            "--bf16",
            "false",
            "--use_cpu",
            "true",
            "--policy_model_path",
            f.missing,
            "--reward_model_paths",
            f.model,
            "--dataset_path",
            f.prompts,
            "--output_dir",
            str(f.root / "g"),
        ],
        "policy_model_path",
    ),
    "grpo-no-reward-model": (
        lambda f: ["grpo", *grpo_flags(f)],
        "set reward_model_paths",
    ),
    "grpo-prompts-without-prompt-column": (
        lambda f: ["grpo", *grpo_flags(f, dataset_path=f.good), "--reward_model_paths", f.model],
        "has no 'prompt'",
    ),
    "rloo-reward-model-missing-folder": (
        lambda f: ["rloo", *grpo_flags(f), "--reward_model_paths", f.missing],
        "does-not-exist does not exist",
    ),
    # dmoerm push / example / serve-judge / the command itself
    "push-not-a-model-folder": (lambda f: ["push", f.missing, "me/model"], "has no config.json"),
    "push-metrics-file-missing": (
        lambda f: ["push", f.model, "me/model", "--metrics", f.missing_file],
        "--metrics",
    ),
    "push-metric-without-value": (lambda f: ["push", f.model, "me/model", "--metric", "accuracy"], "name=value"),
    "example-missing-backbone": (
        lambda f: ["example", "--backbone", f.missing, "--output", str(f.root / "ex")],
        "--backbone",
    ),
    "example-output-is-a-file": (lambda f: ["example", "--backbone", f.llama, "--output", f.good], "--output"),
    "serve-judge-port-out-of-range": (
        lambda f: ["serve-judge", "--model", f.llama, "--port", "70000"],
        "--port: must be 0-65535",
    ),
    "serve-judge-missing-model": (lambda f: ["serve-judge", "--model", f.missing, "--port", "0"], "--model"),
    "serve-judge-max-new-tokens-0": (
        lambda f: ["serve-judge", "--model", f.llama, "--max-new-tokens", "0"],
        "--max-new-tokens: must be at least 1",
    ),
    "serve-judge-missing-chat-template": (
        lambda f: ["serve-judge", "--model", f.llama, "--port", "0", "--chat-template", f.missing_file],
        "--chat-template",
    ),
    "unknown-command": (lambda f: ["rank-everything"], "invalid choice: 'rank-everything'"),
}


def bon_flags(f: Files, **overrides: str) -> list[str]:
    """``dmoerm bon`` on the tiny assets (the tiny Llama as policy, the DMoERM as reward), with ``overrides``."""
    flags = {
        "policy_model_path": f.llama,
        "reward_model_paths": f.model,
        "dataset_path": f.prompts,
        "max_prompt_length": "32",
        "max_new_tokens": "4",
        "n": "2",
        "output_dir": str(f.root / "bon-out"),
        **overrides,
    }
    return ["bon", *(item for name, value in flags.items() for item in (f"--{name}", value))]


def grpo_flags(f: Files, **overrides: str) -> list[str]:
    """``dmoerm grpo``/``rloo`` flags on the tiny assets, without a reward model (the case adds it), ``overrides``."""
    flags = {
        "bf16": "false",
        "use_cpu": "true",
        "policy_model_path": f.llama,
        "dataset_path": f.prompts,
        "max_prompt_length": "32",
        "max_completion_length": "4",
        "num_heldout_prompts": "0",
        "max_steps": "1",
        "report_to": "none",
        **overrides,
        "output_dir": str(f.root / "grpo-out"),
    }
    return [item for name, value in flags.items() for item in (f"--{name}", value)]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse: a bad flag value
        code = exit_info.code
    return code, capsys.readouterr().err


def assert_one_error_line(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    assert expected in errors[0], errors[0]


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_user_mistake_is_one_line_and_exit_code_2(case, files, capsys, monkeypatch):
    monkeypatch.delenv("DMOERM_TRACEBACK", raising=False)
    build, expected = CLI_CASES[case]
    argv = build(files)
    code, stderr = run_cli(argv, capsys)
    assert code == 2, stderr
    assert_one_error_line(stderr, expected)
    for path in (files.missing, files.missing_file):
        if path in argv:  # the line names the path the user gave
            assert Path(path).name in stderr


def test_cli_user_mistakes_in_real_processes(files):
    # What a user sees in a terminal: three commands at once (each process spends seconds importing torch).
    cases = ["score-not-utf8", "info-truncated-heads", "bon-missing-policy"]
    env = {k: v for k, v in os.environ.items() if k != "DMOERM_TRACEBACK"}
    processes = {
        case: subprocess.Popen(
            [sys.executable, "-m", "dmoerm_trl.cli", *CLI_CASES[case][0](files)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case in cases
    }
    for case, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, (case, stderr)
        assert_one_error_line(stderr, CLI_CASES[case][1])


def test_demo_threads_below_1_is_refused_by_the_parser(capsys):
    # Parsed only (never run): a regression here would otherwise start the whole demo. `--threads 0` was ignored
    # silently and `--threads -1` ended in torch's RuntimeError traceback.
    from dmoerm_trl.cli import build_parser

    for value in ("0", "-1"):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["demo", "--threads", value])
        assert exit_info.value.code == 2
        assert_one_error_line(capsys.readouterr().err, "--threads: must be at least 1")


def test_the_traceback_is_there_on_request(files, capsys, monkeypatch):
    monkeypatch.setenv("DMOERM_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="--model"):
        main(["score", "--model", files.missing, "--input", files.good])


# ------------------------------------------------------------------------------------------------ Python API
def _model(files):
    from dmoerm_trl import DMoERMForSequenceClassification

    return DMoERMForSequenceClassification.from_pretrained(files.model)


def _tokenizer(files):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(files.model)


def _from_backbone(files, categories, **kwargs):
    from dmoerm_trl import DMoERMForSequenceClassification

    tokenizer = _tokenizer(files)
    return DMoERMForSequenceClassification.from_backbone(files.llama, categories, tokenizer=tokenizer, **kwargs)


def _pairs(files, name, content):
    from dmoerm_trl.data import load_preference_pairs

    return load_preference_pairs(files.write(name, content))


API_CASES = {
    "from_pretrained-missing-folder": (
        lambda f: _model_from(f.missing),
        FileNotFoundError,
        "does-not-exist does not exist",
    ),
    "from_pretrained-truncated-heads": (
        lambda f: _model_from(f.corrupt_copy("cut-heads", "dmoerm_heads.safetensors")),
        ValueError,
        "dmoerm_heads.safetensors is not a readable safetensors file",
    ),
    "from_backbone-missing-path": (
        lambda f: _from_backbone_path(f.missing),
        FileNotFoundError,
        "backbone",
    ),
    "from_backbone-no-categories": (lambda f: _from_backbone(f, {}), ValueError, "categories is empty"),
    "from_backbone-category-without-capabilities": (
        lambda f: _from_backbone(f, {"chitchat": []}),
        ValueError,
        "'chitchat' has no capabilities",
    ),
    "from_backbone-router-mode-bogus": (
        lambda f: _from_backbone(f, {"chitchat": ["empathy"]}, router_mode="bogus"),
        ValueError,
        "router_mode",
    ),
    "forward-empty-batch": (
        lambda f: _model(f)(input_ids=torch.zeros(0, 4, dtype=torch.long)),
        ValueError,
        "input_ids has shape (0, 4)",
    ),
    "forward-zero-length-input": (
        lambda f: _model(f)(input_ids=torch.zeros(2, 0, dtype=torch.long)),
        ValueError,
        "input_ids has shape (2, 0)",
    ),
    "forward-a-row-of-padding-only": (
        lambda f: _model(f)(
            input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]])
        ),
        ValueError,
        "row(s) [1] of the batch have no tokens",
    ),
    "forward-1d-input": (
        lambda f: _model(f)(input_ids=torch.ones(3, dtype=torch.long)),
        ValueError,
        "must be (batch, length)",
    ),
    "compute_rewards-number": (
        lambda f: _model(f).compute_rewards(["ok", 5], _tokenizer(f)),
        ValueError,
        "conversation 1",
    ),
    "compute_rewards-empty-text": (
        lambda f: _model(f).compute_rewards([""], _tokenizer(f)),
        ValueError,
        "conversation 0: the text is empty",
    ),
    "compute_rewards-empty-messages": (
        lambda f: _model(f).compute_rewards([[]], _tokenizer(f)),
        ValueError,
        "`messages` is empty",
    ),
    "compute_rewards-a-bare-string": (
        lambda f: _model(f).compute_rewards("Q: 2+2? A: 4", _tokenizer(f)),
        ValueError,
        "wrap a single one in [...]",
    ),
    "compute_rewards-batch-size-0": (
        lambda f: _model(f).compute_rewards(["ok"], _tokenizer(f), batch_size=0),
        ValueError,
        "batch_size",
    ),
    "load_preference_pairs-missing-file": (
        lambda f: _load_pairs(f.missing_file),
        FileNotFoundError,
        "does-not-exist.jsonl: no such file",
    ),
    "load_preference_pairs-unknown-format": (
        lambda f: _pairs(f, "half.jsonl", '{"prompt": "x", "chosen": "a"}\n'),
        ValueError,
        "half.jsonl, line 1: unknown record format",
    ),
    "load_preference_pairs-rank-not-a-number": (
        lambda f: _pairs(
            f,
            "rank.jsonl",
            json.dumps({"src": ["a"], "tgt": [], "response": ["x", "y"], "rank": [1, "two"], "label": ""}) + "\n",
        ),
        ValueError,
        "rank.jsonl, line 1, field 'rank[1]'",
    ),
    "load_capability_labels-missing-field": (
        lambda f: _labels(f.write("labels.jsonl", '{"prompt": "x"}\n')),
        ValueError,
        "labels.jsonl, line 1, field 'chosen': missing",
    ),
    "LabelingConfig-concurrency-text": (
        lambda f: _labeling_config(concurrency="lots"),
        ValueError,
        "concurrency='lots': must be an int",
    ),
    "RewardScorer-batch-size-0": (
        lambda f: _scorer(f, batch_size=0),
        ValueError,
        "batch_size must be at least 1",
    ),
}


def _model_from(path):
    from dmoerm_trl import DMoERMForSequenceClassification

    return DMoERMForSequenceClassification.from_pretrained(path)


def _from_backbone_path(path):
    from dmoerm_trl import DMoERMForSequenceClassification

    return DMoERMForSequenceClassification.from_backbone(path, {"chitchat": ["empathy"]})


def _load_pairs(path):
    from dmoerm_trl.data import load_preference_pairs

    return load_preference_pairs(path)


def _labels(path):
    from dmoerm_trl.data import load_capability_labels

    return load_capability_labels(path)


def _labeling_config(**kwargs):
    from dmoerm_trl.labeling.config import LabelingConfig

    return LabelingConfig(data=MTMC, output="labels", model="judge", **kwargs)


def _scorer(files, **kwargs):
    from dmoerm_trl.rl import RewardScorer

    return RewardScorer(_model(files), _tokenizer(files), **kwargs)


@pytest.mark.parametrize("case", list(API_CASES))
def test_python_api_user_mistake_names_what_is_wrong(case, files):
    call, error_type, expected = API_CASES[case]
    with pytest.raises(error_type) as error:
        call(files)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message.strip()


def test_the_table_covers_at_least_40_mistakes_across_the_commands():
    commands = {case.split("-")[0] for case in CLI_CASES}
    assert len(CLI_CASES) + len(API_CASES) >= 40
    assert {"score", "info", "eval", "label", "train", "bon", "grpo", "push", "example", "serve"} <= commands
