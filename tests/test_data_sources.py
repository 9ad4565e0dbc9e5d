"""Data as TRL users have it: categories from another column (category_column / category_map) and datasets loaded
with ``datasets.load_dataset`` (dataset_name / dataset_config / dataset_train_split)."""

from __future__ import annotations

import json

import pytest

from dmoerm_trl.data import (
    DataValidationError,
    LoadReport,
    load_dataset_split,
    load_preference_pairs,
    parse_category_map,
)

TRL_ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5.", "source": "gsm8k"},
    {"prompt": "Hi there!", "chosen": "Hello! How are you?", "rejected": "Go away.", "source": "oasst"},
    {"prompt": "Write a haiku.", "chosen": "Autumn moon...", "rejected": "No.", "source": "poems"},
]


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "mapping",
    [
        {"gsm8k": "objective_qa", "oasst": "chitchat"},
        "gsm8k=objective_qa, oasst=chitchat",
        "file",
    ],
)
def test_category_from_another_column_through_a_map(tmp_path, mapping):
    if mapping == "file":
        mapping = tmp_path / "map.yaml"
        mapping.write_text("gsm8k: objective_qa\noasst: 闲聊\n", encoding="utf-8")  # an alias of the paper set
    path = write_jsonl(tmp_path / "pairs.jsonl", TRL_ROWS)
    report = LoadReport()
    pairs = load_preference_pairs(
        path, categories="paper", category_column="source", category_map=mapping, report=report
    )
    assert pairs["category"] == ["objective_qa", "chitchat", ""]
    # the unmapped value is counted and reported, not silently dropped
    assert report.uncategorised_pairs == 1 and dict(report.unmapped_category_values) == {"poems": 1}
    assert report.to_dict()["unmapped_category_values"] == {"poems": 1}


def test_category_column_without_a_map_takes_the_values_as_categories(tmp_path):
    rows = [{**row, "task": "objective_qa"} for row in TRL_ROWS]
    pairs = load_preference_pairs(write_jsonl(tmp_path / "p.jsonl", rows), category_column="task")
    assert set(pairs["category"]) == {"objective_qa"}


def test_category_column_works_for_ranked_records(tmp_path):
    record = {"src": ["2+2?"], "tgt": [], "response": ["4", "5"], "rank": [1, 2], "label": "", "origin": "math"}
    pairs = load_preference_pairs(
        write_jsonl(tmp_path / "r.jsonl", [record]), category_column="origin", category_map={"math": "objective_qa"}
    )
    assert pairs["category"] == ["objective_qa"]


def test_a_record_without_the_category_column_is_named(tmp_path):
    rows = [TRL_ROWS[0], {k: v for k, v in TRL_ROWS[1].items() if k != "source"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(
        DataValidationError,
        match=r"p\.jsonl, line 2, field 'source': missing \(it is the "
        r"category_column\)",
    ):
        load_preference_pairs(path, category_column="source", category_map={"gsm8k": "objective_qa"})
    report = LoadReport()
    pairs = load_preference_pairs(
        path, category_column="source", category_map={"gsm8k": "objective_qa"}, skip_invalid=True, report=report
    )
    assert len(pairs) == 1 and report.skipped_by_field == {"source": 1}


def test_a_mapped_value_that_is_not_a_category_of_the_set_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", TRL_ROWS[:1])
    with pytest.raises(DataValidationError, match="unknown category 'maths'"):
        load_preference_pairs(path, categories="paper", category_column="source", category_map={"gsm8k": "maths"})


@pytest.mark.parametrize(
    "value, problem",
    [
        ("gsm8k", "neither an existing file nor 'value=category' items"),
        ("a=b=c", "neither an existing file"),
        ({}, "expected a non-empty mapping"),
        ({"gsm8k": ""}, "map to no category name"),
        ({"gsm8k": 3}, "map to no category name"),
    ],
)
def test_bad_category_maps_say_what_is_wrong(value, problem):
    with pytest.raises(ValueError, match=problem):
        parse_category_map(value)


def test_a_category_map_file_that_is_not_yaml(tmp_path):
    bad = tmp_path / "map.yaml"
    bad.write_text("gsm8k: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"map\.yaml: not valid YAML \(.*\)\. Fix the YAML syntax"):
        parse_category_map(bad)


def test_dataset_name_loads_a_local_data_folder_and_its_splits(tmp_path):
    folder = tmp_path / "my_prefs"
    write_jsonl(folder / "train.jsonl", [{**row, "category": "objective_qa"} for row in TRL_ROWS])
    write_jsonl(folder / "test.jsonl", [{**TRL_ROWS[0], "category": "chitchat"}])
    train = load_dataset_split(str(folder))
    assert len(train) == 3
    pairs = load_preference_pairs(train, categories="paper")
    assert len(pairs) == 3 and set(pairs["category"]) == {"objective_qa"}
    test = load_dataset_split(str(folder), split="test")
    assert load_preference_pairs(test)["category"] == ["chitchat"]
    with pytest.raises(ValueError, match=r"split='validation'.*Fix: use one of the splits"):
        load_dataset_split(str(folder), split="validation")


def test_dataset_name_that_cannot_be_loaded_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"dataset_name='no-such-user/no-such-set'.*Fix:"):
        load_dataset_split("no-such-user/no-such-set")
