"""`dmoerm label` on data with a non-UTF-8 byte or a NaN rank: the error names file and line; --skip-invalid skips
and counts them, and labels the rest."""

from __future__ import annotations

import json

from labeling_helpers import read_jsonl
from test_label_cli import label_args

from dmoerm_trl.cli import main
from dmoerm_trl.labeling.scripted_judge_server import ScriptedJudgeServer, VerdictJudge


def test_a_latin1_byte_and_a_nan_rank_are_named_then_skipped_and_counted(labeling_data, tmp_path, capsys):
    records = read_jsonl(labeling_data.data)[:4]
    records[3]["rank"] = [float("nan"), 1, 2]  # json.dumps writes the NaN literal Python's json reads back
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in records]
    assert b"[NaN, 1, 2]" in lines[3]
    lines[1] = lines[1].replace(b"candidate 1", b"caf\xe9 candidate 1")  # one latin-1 byte in a response
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    data = type(labeling_data)(**{**vars(labeling_data), "data": str(bad)})

    with ScriptedJudgeServer(VerdictJudge(labeling_data.scores)) as server:
        assert main(label_args(data, tmp_path / "out", server)) != 0
        error = capsys.readouterr().err
        assert f"{bad}, line 2, field 'response[1]': not UTF-8 text (byte 0xe9" in error
        assert "Traceback" not in error and "UnicodeDecodeError" not in error
        assert server.counts["requests"] == 0  # nothing is asked before the data is valid

        assert main(label_args(data, tmp_path / "out", server, "--skip-invalid")) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["data"]["skipped_records"] == 2
    assert summary["data"]["skipped_by_field"] == {"response[1]": 1, "rank[0]": 1}
    examples = summary["data"]["skip_examples"]
    assert f"{bad}, line 2" in examples[0]
    assert f"{bad}, line 4, field 'rank[0]': expected an integer, got nan" in examples[1]
    assert summary["pairs"] == 2 * 3  # the two valid records, 3 pairs each
