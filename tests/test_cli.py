"""The `dmoerm` command: help, info, score and the example."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from dmoerm_trl.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("info", "score", "example"):
        assert command in out


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "dmoerm_trl.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "DMoERM" in result.stdout


def test_example_then_info_then_score(tiny_llama_path, tmp_path, capsys):
    output = tmp_path / "example"
    assert main(["example", "--backbone", tiny_llama_path, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("routed to") == 4 and printed.count(" | ") >= 4
    assert main(["info", str(output)]) == 0
    info = capsys.readouterr().out
    assert "objective_qa: correctness, logic, depth_of_knowledge" in info
    assert "(11 adapters)" in info  # 1 router + 3 task + 7 experts
    assert "routes on:    the prompt (up to the last '<|im_start|>assistant\\n')" in info
    assert main(["info", str(output), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert len(described["parameters"]["per_adapter"]) == 11
    assert described["parameters"]["base"] > 0 and described["categories"]["chitchat"] == ["empathy", "fluency"]
    # base: counted from the architecture alone, and it matches the real model
    from dmoerm_trl import DMoERMForSequenceClassification

    loaded = DMoERMForSequenceClassification.from_pretrained(output)
    counts = loaded.num_parameters_by_part()
    assert described["parameters"]["base"] == counts["base"]
    assert described["parameters"]["adapters"] == counts["adapters"]
    assert described["parameters"]["heads"] == counts["heads"]

    conversations = tmp_path / "conversations.jsonl"
    templated = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    conversations.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})
        + "\n"
        + json.dumps({"text": templated})
        + "\n"
        + json.dumps({"text": "plain text", "category": "chitchat"})
        + "\n"
    )
    assert main(["score", "--model", str(output), "--input", str(conversations), "--tokenizer", tiny_llama_path]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 3 and all("reward" in line and "capabilities" in line for line in lines)
    # messages, and the same conversation as chat-templated text (batched with other rows: float noise only)
    assert lines[0]["category"] == lines[1]["category"]
    assert lines[0]["reward"] == pytest.approx(lines[1]["reward"], abs=1e-6)
    assert lines[2]["category"] == "chitchat" and lines[2]["router_prob"] is None
    # Plain text gives the router no prompt boundary: an error naming the line and the fixes.
    conversations.write_text(json.dumps({"text": templated}) + "\n" + json.dumps({"text": "plain text"}) + "\n")
    assert main(["score", "--model", str(output), "--input", str(conversations), "--tokenizer", tiny_llama_path]) == 2
    error = capsys.readouterr().err
    assert re.search(r"conversations.jsonl, line 2: the router reads the prompt only.*category", error)


def test_info_on_a_folder_that_is_not_a_model(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "not a saved DMoERM" in capsys.readouterr().err


def test_score_reports_bad_lines(tmp_path):
    from dmoerm_trl.commands.score import read_conversations

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"oops": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 2: needs a `messages` list or a `text` string"):
        read_conversations(str(bad))
