"""Splits by conversation, categories checked against the model, capability labels per expert, bad input."""

from __future__ import annotations

from collections import Counter

import pytest
from trainer_helpers import DATA, LABELS, TINY_CATEGORIES

from dmoerm_trl.data import load_capability_labels, load_category_spec, load_preference_pairs
from dmoerm_trl.data.errors import DataReport, TrainingDataError
from dmoerm_trl.data.formats import conversation_key
from dmoerm_trl.data.splits import resolve_categories, select_capability_labels, split_by_conversation
from dmoerm_trl.data.tokenize import tokenize_pairs


@pytest.fixture(scope="module")
def pairs():
    return load_preference_pairs(DATA)


def test_split_keeps_each_conversation_in_one_split(pairs):
    splits = split_by_conversation(pairs, validation_ratio=0.15, task_ratio=0.6, seed=0)
    assert set(splits) == set(TINY_CATEGORIES)
    key_of = {pid: conversation_key(prompt) for pid, prompt in zip(pairs["pair_id"], pairs["prompt"])}
    for split in splits.values():
        where = {}
        for name in ("task", "aggregator", "validation"):
            for pid in split[name]:
                assert where.setdefault(key_of[pid], name) == name, "a conversation straddles two splits"
        conversations = split["conversations"]
        total = sum(conversations.values())
        assert conversations["validation"] == round(total * 0.15)
        assert conversations["task"] == round((total - conversations["validation"]) * 0.6)
        assert conversations["aggregator"] > 0
    unlabeled = sum(1 for c in pairs["category"] if not c)
    assert unlabeled > 0
    assert (
        sum(len(s[n]) for s in splits.values() for n in ("task", "aggregator", "validation")) == len(pairs) - unlabeled
    )


def test_split_is_deterministic_and_seeded(pairs):
    first = split_by_conversation(pairs, 0.1, 0.6, seed=0)
    assert first == split_by_conversation(pairs, 0.1, 0.6, seed=0)
    assert first != split_by_conversation(pairs, 0.1, 0.6, seed=1)


def test_resolve_categories_drops_and_counts_unknown(pairs):
    report = DataReport()
    model_categories = {"chitchat": ["empathy_ability"], "objective_qa": ["correctness"]}
    resolved = resolve_categories(pairs, load_category_spec(model_categories), model_categories, "human", report)
    kept = Counter(resolved["category"])
    assert set(kept) == {"chitchat", "objective_qa", ""}  # "" (no category) is kept for the router
    assert report.counts["human_unknown_category_rows"] == Counter(pairs["category"])["roleplay"]
    assert "roleplay" in report.warnings[0]


def test_resolve_categories_stops_when_nothing_matches(pairs):
    with pytest.raises(TrainingDataError, match="none of its .* rows belongs to a category of the model"):
        resolve_categories(
            pairs.filter(lambda r: r["category"] == "roleplay"), None, {"math": ["rigor"]}, "human", DataReport()
        )


def test_capability_labels_per_expert(pairs):
    labels = load_capability_labels(LABELS)
    splits = split_by_conversation(pairs, 0.15, 0.6, seed=0)
    validation_ids = {pid for s in splits.values() for pid in s["validation"]}
    validation_keys = {
        conversation_key(p) for p, pid in zip(pairs["prompt"], pairs["pair_id"]) if pid in validation_ids
    }
    report = DataReport()
    experts = select_capability_labels(labels, TINY_CATEGORIES, validation_keys, 8, list(TINY_CATEGORIES), report)
    assert set(experts) == {(c, cap) for c, caps in TINY_CATEGORIES.items() for cap in caps}
    for (category, capability), entry in experts.items():
        assert entry["num_train"] >= 8 and entry["num_validation"] > 0
        assert set(entry["train"]["capability"]) == {capability}
        # labels on validation conversations validate; they never train
        assert not {conversation_key(p) for p in entry["train"]["prompt"]} & validation_keys
        assert {conversation_key(p) for p in entry["validation"]["prompt"]} <= validation_keys


def test_capability_with_too_few_labels_is_a_counted_skip(pairs):
    labels = load_capability_labels(LABELS)
    report = DataReport()
    experts = select_capability_labels(labels, TINY_CATEGORIES, set(), 10_000, ["chitchat"], report)
    assert set(experts) == {("chitchat", "empathy_ability"), ("chitchat", "proactivity")}
    assert all("min_capability_labels=10000" in entry["skip"] for entry in experts.values())
    assert report.counts["capabilities_skipped_too_few_labels"] == 2


def test_label_file_for_other_capabilities(pairs):
    labels = load_capability_labels(LABELS)
    other = {"chitchat": ["humour"], "objective_qa": ["correctness"]}
    report = DataReport()
    experts = select_capability_labels(labels, other, set(), 1, list(other), report)
    assert "skip" in experts[("chitchat", "humour")]  # no label for it
    assert experts[("objective_qa", "correctness")]["num_train"] > 0
    assert report.counts["capability_labels_unknown_capability_rows"] > 0
    with pytest.raises(TrainingDataError, match="does not match the model"):
        select_capability_labels(labels, {"chitchat": ["humour"]}, set(), 1, ["chitchat"], DataReport())


def test_tokenize_pairs_matches_the_chat_template_and_counts_long_pairs(pairs, tiny_tokenizer):
    report = DataReport()
    sample = pairs.select(range(20))
    tokenized = tokenize_pairs(sample, tiny_tokenizer, max_length=None, what="human")
    row = tokenized[0]
    expected = tiny_tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True, return_dict=True)
    assert row["chosen_ids"] == list(expected["input_ids"])
    assert row["prompt_ids"] == row["chosen_ids"][: len(row["prompt_ids"])]
    cut = sorted(max(len(c), len(r)) for c, r in zip(tokenized["chosen_ids"], tokenized["rejected_ids"]))[10]
    shorter = tokenize_pairs(sample, tiny_tokenizer, max_length=cut, what="human", report=report)
    assert len(shorter) + report.counts["human_pairs_longer_than_max_length"] == 20
    assert report.counts["human_pairs_longer_than_max_length"] > 0
