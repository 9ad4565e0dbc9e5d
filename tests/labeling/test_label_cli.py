"""`dmoerm label`: exit codes, promised error messages, YAML configs, and the API key never reaching disk or logs."""

from __future__ import annotations

import json
import logging

from labeling_helpers import expected_labels, label_set, read_jsonl

from dmoerm_trl.cli import main
from dmoerm_trl.labeling.scripted_judge_server import ScriptedJudgeServer, VerdictJudge


def label_args(data, output, server, *extra):
    return [
        "label",
        "--data",
        data.data,
        "--output",
        str(output),
        "--model",
        "scripted-judge",
        "--base-url",
        server.base_url,
        "--categories",
        data.categories,
        "--no-progress",
        "--timeout",
        "2",
        "--backoff-base",
        "0.01",
        "--backoff-max",
        "0.05",
        *extra,
    ]


def test_api_key_never_reaches_disk_cache_summary_or_logs(labeling_data, tmp_path, monkeypatch, caplog, capsys):
    secret = "sk-test-DO-NOT-LEAK-0123456789abcdef"
    wrong = "sk-wrong-ALSO-SECRET-9876543210fedcba"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    judge = VerdictJudge(labeling_data.scores)
    faults = {"rate_limit": 0.15, "server_error": 0.15}  # retries log their errors: those must be clean too
    with ScriptedJudgeServer(judge, require_api_key=secret, faults=faults) as server:
        with caplog.at_level(logging.DEBUG):
            assert main(label_args(labeling_data, tmp_path / "ok", server, "--mode", "joint")) == 0
            # the key was really sent, on every request
            assert server.auth_headers == {f"Bearer {secret}": server.counts["requests"]}
            # a wrong key from the flag: the server echoes it in its 401 message, as real APIs do (partly masked)
            assert main(label_args(labeling_data, tmp_path / "refused", server, "--api-key", wrong)) == 1
        assert server.counts["unauthorized"] >= 1
    summary = json.loads((tmp_path / "refused" / "summary.json").read_text(encoding="utf-8"))
    assert "HTTP 401" in summary["aborted"] and "Check the API key" in summary["aborted"]
    assert label_set(read_jsonl(tmp_path / "ok" / "capability_pairs.jsonl")) == expected_labels(labeling_data)
    captured = capsys.readouterr()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "cache.sqlite" for p in files) and any(p.name == "summary.json" for p in files)
    for key in (secret, wrong):
        for fragment in (key, key[8:24]):  # the whole key, or a masked middle part of it
            assert fragment not in caplog.text and fragment not in captured.out and fragment not in captured.err
            for path in files:
                assert fragment.encode() not in path.read_bytes(), path


def test_malformed_data_gives_the_promised_error_or_a_counted_skip(labeling_data, tmp_path, capsys):
    records = read_jsonl(labeling_data.data)[:3]
    records.insert(1, {**records[0], "rank": [1, 2]})  # 3 responses, 2 ranks
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    data = type(labeling_data)(**{**vars(labeling_data), "data": str(bad)})
    with ScriptedJudgeServer(VerdictJudge(labeling_data.scores)) as server:
        assert main(label_args(data, tmp_path / "out", server)) == 2
        error = capsys.readouterr().err
        assert f"{bad}, line 2, field 'rank': has 2 ranks for 3 responses" in error and "--skip-invalid" not in error
        assert server.counts["requests"] == 0  # nothing is asked before the data is valid
        assert main(label_args(data, tmp_path / "out", server, "--skip-invalid")) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["data"]["skipped_records"] == 1 and summary["data"]["skipped_by_field"] == {"rank": 1}
    assert "line 2" in summary["data"]["skip_examples"][0]
    assert summary["pairs"] == 3 * 3


def test_config_file_flags_exit_codes_and_template_errors(labeling_data, tmp_path, capsys):
    with ScriptedJudgeServer(VerdictJudge(labeling_data.scores)) as server:
        config = tmp_path / "label.yaml"
        config.write_text(
            f"data: {labeling_data.data}\nmodel: scripted-judge\nbase_url: {server.base_url}\n"
            f"categories: {labeling_data.categories}\nmode: joint\nprogress: false\nbudget_calls: 4\n",
            encoding="utf-8",
        )
        # budget reached: exit 3, and the printed hint says how to continue
        assert main(["label", "--config", str(config), "--output", str(tmp_path / "a")]) == 3
        assert "rerun the same command" in capsys.readouterr().err
        summary = json.loads((tmp_path / "a" / "summary.json").read_text(encoding="utf-8"))
        assert summary["mode"] == "joint" and summary["calls"] == 4 and summary["options"]["budget_calls"] == 4
        # flags override the file
        assert main(["label", "--config", str(config), "--output", str(tmp_path / "a"), "--budget-calls", "1000"]) == 0
        assert json.loads((tmp_path / "a" / "summary.json").read_text(encoding="utf-8"))["cache_hits"] == 4
        bad_template = tmp_path / "t.yaml"
        bad_template.write_text("mode: per_capability\nuser: 'Which is better: {response_1} or {response_2}?'\n")
        assert main(label_args(labeling_data, tmp_path / "b", server, "--template", str(bad_template))) == 2
        error = capsys.readouterr().err
        assert str(bad_template) in error and "lacks" in error and "conversation" in error
        assert main(["label", "--output", str(tmp_path / "c")]) == 2
        assert "Missing required option(s): --data, --model" in capsys.readouterr().err
        config.write_text("api_key: sk-nope\n", encoding="utf-8")
        assert main(["label", "--config", str(config), "--output", str(tmp_path / "d")]) == 2
        assert "do not store API keys in config files" in capsys.readouterr().err


def test_a_run_with_few_labels_prints_why_one_line_per_cause(labeling_data, tmp_path, capsys):
    judge = VerdictJudge(labeling_data.scores, undecided={"correctness", "logic", "empathy", "fluency"})
    with ScriptedJudgeServer(judge) as server:
        assert main(label_args(labeling_data, tmp_path / "out", server)) == 0
    out = capsys.readouterr().out
    n_qa, n_chat = labeling_data.pairs["objective_qa"], labeling_data.pairs["chitchat"]
    assert f"labeled pairs objective_qa: correctness 0/{n_qa}, logic 0/{n_qa}, depth " in out
    labels = int(out.split("labels: ")[1].split()[0])
    assert f"why only {labels} label(s):" in out  # depth alone is decided: fewer than half are labels
    causes = [line for line in out.splitlines() if line.startswith("  - ")]
    assert len(causes) == 1 and causes[0].startswith(f"  - undecided: {2 * n_qa + 2 * n_chat} of ")
    assert "e.g. for " in causes[0] and "Try a stronger judge" in causes[0]
    with ScriptedJudgeServer(VerdictJudge(labeling_data.scores)) as server:  # all labeled: no explanation
        # --output as the docs write it (labels/): the printed paths have no doubled slash
        assert main(label_args(labeling_data, f"{tmp_path / 'clean'}/", server)) == 0
    out = capsys.readouterr().out
    assert "why only" not in out
    clean = tmp_path / "clean"
    assert f"wrote {clean / 'capability_pairs.jsonl'} and {clean / 'summary.json'}" in out


def test_a_hosted_judge_without_an_api_key_is_refused_before_any_call(labeling_data, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    argv = ["label", "--data", labeling_data.data, "--output", str(tmp_path / "out"), "--model", "gpt-4o-mini"]
    assert main([*argv, "--base-url", "https://api.example.com/v1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "https://api.example.com/v1 is not on this machine, but OPENAI_API_KEY is not set" in err[0]
    )
    assert not (tmp_path / "out").exists()
    # a local judge needs no key: the run gets past the check (and stops at once: nothing listens on port 9)
    assert main([*argv, "--base-url", "http://127.0.0.1:9/v1", "--categories", labeling_data.categories]) == 1
    assert "cannot reach the judge at http://127.0.0.1:9/v1" in capsys.readouterr().err


def test_pairs_without_a_category_are_refused_when_all_and_counted_when_some(tmp_path, capsys):
    # TRL preference data usually has no category: the run used to end with 0 labels, exit code 0 and a log warning.
    scores = {"4.": {"correctness": 2.0, "logic": 2.0}, "5.": {"correctness": 1.0, "logic": 1.0}}
    (tmp_path / "cats.yaml").write_text("objective_qa: [correctness, logic]\n", encoding="utf-8")
    pair = {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."}
    none = tmp_path / "none.jsonl"
    none.write_text(json.dumps(pair) + "\n", encoding="utf-8")
    some = tmp_path / "some.jsonl"
    some.write_text(
        json.dumps(pair) + "\n" + json.dumps({**pair, "category": "objective_qa"}) + "\n", encoding="utf-8"
    )
    common = ["--model", "scripted-judge", "--categories", str(tmp_path / "cats.yaml"), "--no-progress"]
    with ScriptedJudgeServer(VerdictJudge(scores)) as server:
        argv = ["label", "--data", str(none), "--output", str(tmp_path / "a"), "--base-url", server.base_url, *common]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "none.jsonl: none of its 1 pairs has a category of the set" in err and "categorize_with_judge" in err
        assert not (tmp_path / "a").exists()
        argv = ["label", "--data", str(some), "--output", str(tmp_path / "b"), "--base-url", server.base_url, *common]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "labels: 2 from 2 pairs" in out and "1 of 2 pair(s) have no category of the set" in out
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["pairs_without_category"] == 1
