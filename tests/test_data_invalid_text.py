"""dmoerm_trl.data on text that is not UTF-8 and ranks that are not numbers: the error names file, line/record and
field; skip_invalid skips and counts them; the rest of the file loads."""

from __future__ import annotations

import json

import pytest

from dmoerm_trl.data import DataValidationError, LoadReport, load_preference_pairs

RECORD = {"src": ["What is 2+2?"], "tgt": [], "response": ["4", "5", "22"], "rank": [1, 2, 3], "label": "客观知识问答"}


def jsonl_bytes(*records) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)


def load(path, **kwargs):
    report = LoadReport()
    return load_preference_pairs(path, report=report, **kwargs), report


def test_a_non_utf8_byte_names_file_line_and_field_or_is_skipped(tmp_path):
    other = {**RECORD, "src": ["Name a colour."], "response": ["blue", "bleu", "green"]}
    raw = jsonl_bytes(RECORD, other, {**RECORD, "src": ["Hi"]}).replace(b"bleu", b"bl\xe9u")
    path = tmp_path / "ranked.jsonl"
    path.write_bytes(raw)
    with pytest.raises(DataValidationError) as info:
        load(path)
    assert str(info.value).startswith(
        f"{path}, line 2, field 'response[1]': not UTF-8 text (byte 0xe9 at character 3)"
    )
    assert info.value.field == "response[1]" and "\n" not in str(info.value)
    pairs, report = load(path, skip_invalid=True)
    assert len(pairs) == 2 * 3 and report.records == 3 and report.skipped_records == 1
    assert dict(report.skipped_by_field) == {"response[1]": 1}
    assert {p["prompt"][0]["content"] for p in pairs} == {"What is 2+2?", "Hi"}


def test_a_json_array_with_a_bad_byte_and_a_lone_surrogate_escape(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_bytes(
        b'[{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},\n'
        b' {"prompt": "Hi", "chosen": "Ol\xe1", "rejected": "Bye"},\n'  # a latin-1 byte
        b' {"prompt": "Hi", "chosen": "Hey", "rejected": "x \\ud800 y"}]\n'  # valid JSON, not valid text
    )
    with pytest.raises(DataValidationError, match=r"record 1, field 'chosen': not UTF-8 text \(byte 0xe1"):
        load(path)
    pairs, report = load(path, skip_invalid=True)
    assert len(pairs) == 1 and pairs[0]["chosen"] == "Hello!"  # text pairs stay text, as in TRL
    assert dict(report.skipped_by_field) == {"chosen": 1, "rejected": 1}
    assert "lone surrogate \\ud800" in report.skip_examples[1]


@pytest.mark.parametrize("rank", [float("nan"), float("inf"), -float("inf"), 1.5, "1", None, True])
def test_a_rank_that_is_not_an_integer_names_the_rank(tmp_path, rank):
    path = tmp_path / "ranked.jsonl"
    path.write_bytes(jsonl_bytes({**RECORD, "src": ["first"]}, {**RECORD, "rank": [1, rank, 3]}))
    with pytest.raises(DataValidationError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}, line 2, field 'rank[1]': expected an integer, got {rank!r}")
    pairs, report = load(path, skip_invalid=True)
    assert len(pairs) == 3 and dict(report.skipped_by_field) == {"rank[1]": 1}


def test_a_byte_order_mark_and_integral_float_ranks_still_load(tmp_path):
    path = tmp_path / "ranked.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes({**RECORD, "rank": [1.0, 2.0, 3.0]}))
    pairs, report = load(path)
    assert len(pairs) == 3 and report.skipped_records == 0
