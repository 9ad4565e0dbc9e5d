"""The `dmoerm` command: help, info, score and the example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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
    assert len(lines) == 3 and all("reward" in line and "capability_rewards" in line for line in lines)
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


def test_info_on_a_path_that_does_not_exist(tmp_path, capsys):
    assert main(["info", str(tmp_path / "typo")]) == 2
    err = capsys.readouterr().err
    assert "typo does not exist" in err and "not a saved DMoERM" not in err and "Traceback" not in err


def test_score_reads_a_file_that_starts_with_a_bom(tmp_path):
    from dmoerm_trl.commands.score import read_records

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "Q: 2+2? A: 4"}\n{"text": "Q: 3+3? A: 6", "id": 2}\n')
    assert read_records(str(path)) == [(1, "Q: 2+2? A: 4", None, None), (2, "Q: 3+3? A: 6", None, 2)]


def test_score_reports_bad_lines(tmp_path):
    from dmoerm_trl.commands.score import read_conversations

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"oops": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 2: needs a `messages` list or a `text` string"):
        read_conversations(str(bad))


def test_score_batches_records_per_named_category_with_the_rewards_of_one_at_a_time(
    tiny_llama_path, tiny_tokenizer, tiny_categories, tmp_path, capsys, monkeypatch
):
    from dmoerm_trl import DMoERMForSequenceClassification
    from dmoerm_trl.testing_utils import randomize_adapters

    model = DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, tokenizer=tiny_tokenizer)
    randomize_adapters(model, seed=5)  # experts differ, so a row scored by the wrong category would show
    model.save_pretrained(tmp_path / "m")

    def chat(question, answer):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    records = [  # routed and named categories interleaved, texts and messages, with and without ids
        {"id": "r1", "messages": chat("What is 2+2?", "4")},
        {"id": "q1", "text": "plain text, a fact", "category": "objective_qa"},
        {"messages": chat("How are you?", "Great, and you? I hope your day went well."), "category": "chitchat"},
        {"id": 4, "text": "a longer plain text: Paris is the capital of France", "category": "objective_qa"},
        {"id": "r2", "messages": chat("Tell me a joke", "No.")},
        {"id": "c2", "text": "hi", "category": "chitchat"},
        {"id": "q3", "messages": chat("Why is the sky blue?", "Rayleigh scattering."), "category": "objective_qa"},
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    calls = []  # what each compute_rewards call scored: (number of conversations, categories=)
    original = DMoERMForSequenceClassification.compute_rewards

    def recording(self, conversations, tokenizer, *args, **kwargs):
        calls.append((len(conversations), kwargs.get("categories")))
        return original(self, conversations, tokenizer, *args, **kwargs)

    monkeypatch.setattr(DMoERMForSequenceClassification, "compute_rewards", recording)
    command = ["score", "--model", str(tmp_path / "m"), "--input", str(data), "--tokenizer", tiny_llama_path]
    assert main([*command, "--batch_size", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert calls == [(2, None), (3, "objective_qa"), (2, "chitchat")]  # the routed rows, then one call per category
    monkeypatch.undo()

    loaded = DMoERMForSequenceClassification.from_pretrained(tmp_path / "m")
    assert [row.get("id") for row in rows] == [record.get("id") for record in records]
    for row, record in zip(rows, records):
        conversation = record.get("messages", record.get("text"))
        alone = loaded.compute_rewards([conversation], tiny_tokenizer, categories=record.get("category"))[0]
        assert row["category"] == alone["category"] == record.get("category", alone["category"])
        assert row["reward"] == pytest.approx(alone["reward"], abs=1e-5)
        assert row["capability_rewards"] == pytest.approx(alone["capability_rewards"], abs=1e-5)
        if "category" in record:
            assert row["router_prob"] is None and alone["router_prob"] is None
        else:
            assert row["router_prob"] == pytest.approx(alone["router_prob"], abs=1e-5)
    # a name the model does not know is refused before scoring, naming the line
    data.write_text(json.dumps(records[0]) + "\n" + json.dumps({"text": "x", "category": "poetry"}) + "\n")
    assert main(command) == 2
    error = capsys.readouterr().err
    assert "mixed.jsonl, line 2: unknown category 'poetry'" in error and "objective_qa" in error


def test_score_takes_the_model_folders_tokenizer_warns_once_and_names_repeated_ids(tmp_path, capsys):
    # The checked-in folder's base (./base) has no tokenizer: only the folder's own one can be used.
    folder = Path(__file__).parent / "fixtures" / "saved_dmoerm_v1"
    chat = [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "Paris."}]
    data = tmp_path / "in.jsonl"
    rows = [{"id": "a", "messages": chat}, {"id": "b", "messages": chat}, {"id": "a", "messages": chat}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["score", "--model", str(folder), "--input", str(data)]) == 0
    captured = capsys.readouterr()
    scored = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [row["id"] for row in scored] == ["a", "b", "a"] and all(row["truncated"] for row in scored)
    warnings = [line for line in captured.err.splitlines() if "longer than" in line]
    assert len(warnings) == 1 and warnings[0].startswith("dmoerm score: 3 of 3 conversations were longer than")
    repeated = [line for line in captured.err.splitlines() if "repeat the `id`" in line]
    assert len(repeated) == 1 and "line 3 repeats 'a' of line 1" in repeated[0]
