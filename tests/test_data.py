"""dmoerm_trl.data: category sets, mtmc-rlhf and TRL readers, validation errors and counted skips."""

from __future__ import annotations

import json
import logging

import datasets
import pytest

from dmoerm_trl.data import (
    PAPER_CAPABILITY_NAMES_ZH,
    PAPER_CATEGORIES,
    PAPER_CATEGORY_NAMES_ZH,
    DataValidationError,
    LoadReport,
    load_capability_labels,
    load_category_set,
    load_category_spec,
    load_preference_pairs,
    write_jsonl_atomic,
)

MULTI_TURN = {
    "src": ["你好", "法国的首都是哪里？"],
    "tgt": ["你好！有什么可以帮你？"],
    "response": ["巴黎。", "里昂。", "巴黎，法国最大的城市。", "不知道。"],
    "rank": [2, 3, 1, 3],  # candidates 1 and 3 tie
    "label": "客观知识问答",
}
SINGLE_TURN = {
    "src": ["Tell me a joke."],
    "tgt": [],
    "response": ["Knock knock.", "No."],
    "rank": [1, 2],
    "label": "闲聊",
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def as_tuples(pairs):
    return [
        (r["category"], r["prompt"][-1]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"])
        for r in pairs
    ]


# ---------------------------------------------------------------------------------------------------- category sets


def test_paper_preset_matches_the_reference_config():
    assert list(PAPER_CATEGORIES) == ["roleplay", "chitchat", "subjective_qa", "objective_qa", "text_creation"]
    assert [len(c) for c in PAPER_CATEGORIES.values()] == [6, 5, 5, 6, 5]
    assert PAPER_CATEGORY_NAMES_ZH == {
        "roleplay": "角色扮演",
        "chitchat": "闲聊",
        "subjective_qa": "主观知识问答",
        "objective_qa": "客观知识问答",
        "text_creation": "文本创作",
    }
    every_capability = {c for caps in PAPER_CATEGORIES.values() for c in caps}
    assert every_capability == set(PAPER_CAPABILITY_NAMES_ZH)
    assert (
        PAPER_CATEGORIES["objective_qa"][0] == "correctness" and PAPER_CAPABILITY_NAMES_ZH["correctness"] == "正确性"
    )
    assert load_category_set("paper") == PAPER_CATEGORIES
    spec = load_category_spec("paper")
    assert spec.resolve("文本创作") == "text_creation" and spec.resolve("OBJECTIVE_QA") == "objective_qa"
    assert spec.resolve("poetry") is None


def test_yaml_category_sets_short_and_long_form(tmp_path):
    short = tmp_path / "short.yaml"
    short.write_text("math: [correctness, rigor]\nchat:\n  - empathy\n", encoding="utf-8")
    assert load_category_set(short) == {"math": ["correctness", "rigor"], "chat": ["empathy"]}

    long = tmp_path / "long.yaml"
    long.write_text(
        "categories:\n"
        "  math:\n"
        "    aliases: [数学, Mathematics]\n"
        "    capabilities:\n"
        "      correctness: {zh: 正确性, description: 'Are the results right?'}\n"
        "      rigor:\n",
        encoding="utf-8",
    )
    spec = load_category_spec(long)
    assert spec.categories == {"math": ["correctness", "rigor"]}
    assert spec.resolve("数学") == "math" and spec.resolve("mathematics") == "math"
    assert spec.capability_name("correctness", "zh") == "正确性"
    assert spec.capability_name("rigor", "zh") == "rigor"
    assert spec.capability_description("correctness") == "Are the results right?"
    assert load_category_spec(spec.to_yaml_dict()).categories == spec.categories  # round trip


@pytest.mark.parametrize(
    "text, expected",
    [
        ("math: []\n", "math.capabilities: empty"),
        ("math: [correct ness]\n", "'correct ness' is not a valid key"),
        ("categories: {}\n", "no categories"),
        ("math: {capabilities: 3}\n", "expected a list or mapping"),
        ("math: [a\n", "not valid YAML"),
    ],
)
def test_bad_category_yaml_names_file_and_place(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="Fix") as info:
        load_category_spec(path)
    assert str(path) in str(info.value) and expected in str(info.value)


# ---------------------------------------------------------------------------------------------------- mtmc-rlhf


def test_mtmc_keeps_the_whole_context_and_expands_ranks(tmp_path):
    path = write_jsonl(tmp_path / "ranked.jsonl", [MULTI_TURN, SINGLE_TURN])
    report = LoadReport()
    pairs = load_preference_pairs(path, report=report)
    # 4 candidates -> 6 unordered pairs, one tie (rank 3 vs 3) -> 5 pairs; plus 1 pair from the single-turn record.
    assert len(pairs) == 6 and report.tied_pairs == 1 and report.records == 2 and report.pairs == 6
    first = pairs[0]
    assert first["prompt"] == [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "法国的首都是哪里？"},
    ]
    chosen_rejected = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in pairs.select(range(5))}
    assert chosen_rejected == {
        ("巴黎。", "里昂。"),
        ("巴黎，法国最大的城市。", "巴黎。"),
        ("巴黎。", "不知道。"),
        ("巴黎，法国最大的城市。", "里昂。"),
        ("巴黎，法国最大的城市。", "不知道。"),
    }
    assert set(pairs["category"]) == {"objective_qa", "chitchat"}
    assert all(r["chosen"][0]["role"] == "assistant" for r in pairs)
    assert len(set(pairs["pair_id"])) == 6


def test_rank_direction_is_configurable(tmp_path):
    path = write_jsonl(tmp_path / "scores.jsonl", [SINGLE_TURN])
    lower = load_preference_pairs(path)[0]
    higher = load_preference_pairs(path, lower_rank_is_better=False)[0]
    assert lower["chosen"] == higher["rejected"] and lower["rejected"] == higher["chosen"]
    assert lower["chosen"][0]["content"] == "Knock knock."


def test_same_pairs_from_every_file_format_and_a_dataset(tmp_path):
    records = [MULTI_TURN, SINGLE_TURN]
    reference = load_preference_pairs(write_jsonl(tmp_path / "a.jsonl", records))
    (tmp_path / "b.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps({"data": records}, ensure_ascii=False), encoding="utf-8")
    write_jsonl(tmp_path / "d.json", records)  # JSON Lines named .json
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "e.parquet"))
    for source in ["b.json", "c.json", "d.json", "e.parquet"]:
        pairs = load_preference_pairs(tmp_path / source)
        assert pairs.to_list() == reference.to_list(), source
    assert load_preference_pairs(datasets.Dataset.from_list(records)).to_list() == reference.to_list()
    both = load_preference_pairs([tmp_path / "a.jsonl", tmp_path / "b.json"])
    assert len(both) == 2 * len(reference)
    # identical pairs keep distinct, stable ids
    assert both["pair_id"][: len(reference)] == reference["pair_id"]
    assert both["pair_id"][len(reference)] == reference["pair_id"][0] + "-2"
    whole_dir = load_preference_pairs(tmp_path)  # every data file of the directory, sorted by name
    assert len(whole_dir) == 5 * len(reference)


# ---------------------------------------------------------------------------------------------------- TRL formats


def test_trl_text_conversational_and_implicit_prompt(tmp_path):
    convo_prompt = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]
    records = [
        {
            "prompt": convo_prompt,
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "What."}],
            "category": "闲聊",
        },
        {
            "chosen": convo_prompt + [{"role": "assistant", "content": "Hello!"}],
            "rejected": convo_prompt + [{"role": "assistant", "content": "What."}],
        },
    ]
    pairs = load_preference_pairs(write_jsonl(tmp_path / "trl.jsonl", records))
    assert pairs[0]["prompt"] == pairs[1]["prompt"] == convo_prompt
    assert pairs[0]["chosen"] == pairs[1]["chosen"] == [{"role": "assistant", "content": "Hello!"}]
    assert pairs["category"] == ["chitchat", ""]
    # text pairs stay text (TRL's standard format: no chat template around them), one format per dataset
    text = load_preference_pairs(
        write_jsonl(
            tmp_path / "text.jsonl", [{"prompt": "Hi", "chosen": "Hello!", "rejected": "What.", "category": "闲聊"}]
        )
    )
    assert (text[0]["prompt"], text[0]["chosen"], text[0]["category"]) == ("Hi", "Hello!", "chitchat")
    records.append({"prompt": "Hi", "chosen": "Hello!", "rejected": "What.", "category": "chitchat"})
    with pytest.raises(DataValidationError, match=r"line 3, field 'prompt': a text pair among conversational"):
        load_preference_pairs(write_jsonl(tmp_path / "mixed.jsonl", records))
    # with a category set, names must be known: "" (no category) stays "", unknown names are errors
    records[-1] = {**records[0], "category": "poetry"}
    with pytest.raises(DataValidationError, match=r"line 3, field 'category': unknown category 'poetry'"):
        load_preference_pairs(write_jsonl(tmp_path / "trl2.jsonl", records), categories="paper")
    # without a set, unknown names are kept as they are
    assert load_preference_pairs(tmp_path / "trl2.jsonl")["category"][-1] == "poetry"


def test_capability_label_files(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
            "category": "objective_qa",
            "capability": "logic",
        },
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
            "category": "objective_qa",
            "capability": "correctness",
        },
    ]
    path = tmp_path / "capability_pairs.jsonl"
    assert write_jsonl_atomic(rows, path) == 2
    labels = load_capability_labels(path, categories="paper")
    assert labels["capability"] == ["logic", "correctness"] and len(set(labels["pair_id"])) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")  # `dmoerm label` kept no label
    assert load_capability_labels(empty).column_names[-1] == "capability" and len(load_capability_labels(empty)) == 0
    rows[1]["capability"] = "charm"
    write_jsonl_atomic(rows, path)
    with pytest.raises(DataValidationError, match="line 2, field 'capability'.*not a capability of category"):
        load_capability_labels(path, categories="paper")


# ---------------------------------------------------------------------------------------------------- validation

BAD_RECORDS = [
    ({**SINGLE_TURN, "rank": [1]}, "rank", "1 ranks for 2 responses"),
    ({**SINGLE_TURN, "rank": [1, "2"]}, "rank[1]", "expected an integer"),
    ({**SINGLE_TURN, "rank": [1, 1.5]}, "rank[1]", "expected an integer"),
    ({k: v for k, v in SINGLE_TURN.items() if k != "rank"}, "rank", "expected a list of ints"),
    ({**MULTI_TURN, "tgt": []}, "tgt", "0 assistant turns for 2 user turns"),
    ({**SINGLE_TURN, "src": "Tell me a joke."}, "src", "expected a list of strings"),
    ({**SINGLE_TURN, "src": []}, "src", "needs at least 1"),
    ({**SINGLE_TURN, "response": ["a", None]}, "response[1]", "expected a string"),
    ({**SINGLE_TURN, "label": 5}, "label", "expected a string"),
    ({"question": "hi"}, None, "unknown record format"),
    (
        {"prompt": "Hi", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "y"},
        "chosen",
        "but the pair is text",
    ),
    (
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "user", "content": "x"}],
            "rejected": [{"role": "assistant", "content": "y"}],
        },
        "chosen",
        "does not end with an assistant message",
    ),
    (
        {
            "prompt": [{"role": "human", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "x"}],
            "rejected": [{"role": "assistant", "content": "y"}],
        },
        "prompt[0].role",
        "unknown role 'human'",
    ),
    ({"chosen": "x", "rejected": "y"}, "prompt", "share no text prefix"),
]


@pytest.mark.parametrize("record, field, problem", BAD_RECORDS)
def test_malformed_records_name_file_record_and_field(tmp_path, record, field, problem):
    path = write_jsonl(tmp_path / "data.jsonl", [SINGLE_TURN, SINGLE_TURN, record])
    with pytest.raises(DataValidationError) as info:
        load_preference_pairs(path)
    error = info.value
    assert error.source == str(path) and error.location == "line 3" and error.field == field
    assert problem in str(error) and "Fix:" in str(error)


def test_invalid_json_line_and_json_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(SINGLE_TURN) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"broken.jsonl, line 3: not valid JSON"):
        load_preference_pairs(path)
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('[{"src": ["a"]', encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"broken.json, line 1: not valid JSON"):
        load_preference_pairs(bad_json)
    parquet = tmp_path / "bad.parquet"
    datasets.Dataset.from_list([SINGLE_TURN, {**SINGLE_TURN, "rank": [1, 2, 3]}]).to_parquet(str(parquet))
    with pytest.raises(DataValidationError, match=r"bad.parquet, record 1, field 'rank'"):
        load_preference_pairs(parquet)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_preference_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "data.csv").write_text("a,b\n")
        load_preference_pairs(tmp_path / "data.csv")


def test_skip_invalid_counts_and_reports_every_skip(tmp_path, caplog):
    records = [SINGLE_TURN] + [r for r, _, _ in BAD_RECORDS] + [MULTI_TURN]
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    (tmp_path / "mixed.jsonl").write_text(path.read_text(encoding="utf-8") + "{oops\n", encoding="utf-8")
    report = LoadReport()
    with caplog.at_level(logging.WARNING, logger="dmoerm_trl.data"):
        pairs = load_preference_pairs(path, skip_invalid=True, report=report)
    assert len(pairs) == 1 + 5
    assert report.skipped_records == len(BAD_RECORDS) + 1 == report.records - 2
    assert sum(report.skipped_by_field.values()) == report.skipped_records
    assert report.skipped_by_field["rank"] == 2 and report.skipped_by_field["<record>"] == 2
    assert len(report.skip_examples) == 10 and "line 2" in report.skip_examples[0]
    assert f"Skipped {report.skipped_records} invalid record(s)" in caplog.text
    assert json.loads(json.dumps(report.to_dict()))["skipped_records"] == report.skipped_records


def test_reward_trainer_reads_the_pairs_as_is(tmp_path, tiny_llama_path):
    """The columns are TRL's conversational preference format: a RewardTrainer step runs on them unchanged."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    pairs = load_preference_pairs(write_jsonl(tmp_path / "ranked.jsonl", [MULTI_TURN, SINGLE_TURN]))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1
    assert {"prompt", "chosen", "rejected"} <= set(pairs.column_names)
