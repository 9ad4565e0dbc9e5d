"""The generator: deterministic files in the mtmc-rlhf schema, truth side fields that match the text, held-out test
prompts, and "human" ranks that contradict the gold at the configured rate."""

from __future__ import annotations

import json
import math

import pytest

from dmoerm_trl.data import LoadReport, load_category_spec, load_preference_pairs
from dmoerm_trl.synthetic import GoldReward, generate_dataset, generate_files, write_dataset
from dmoerm_trl.synthetic.generate import main as generate_main


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = generate_files(tmp_path / "a", pairs_per_category=12, test_pairs_per_category=4, seed=5)
    second = generate_files(tmp_path / "b", pairs_per_category=12, test_pairs_per_category=4, seed=5)
    other = generate_files(tmp_path / "c", pairs_per_category=12, test_pairs_per_category=4, seed=6)
    for name in ("train", "test", "heldout_prompts", "categories", "world"):
        with open(first[name], "rb") as a, open(second[name], "rb") as b:
            assert a.read() == b.read(), name
    assert _read(first["train"]) != _read(other["train"])
    assert not list(tmp_path.glob("*/.*.tmp"))  # atomic writes leave no temporary files


def test_files_load_with_the_data_api_without_skips(small_synthetic_data):
    spec = load_category_spec(small_synthetic_data["categories"])
    for split, pairs_per_category in (("train", 15), ("test", 5)):
        report = LoadReport()
        pairs = load_preference_pairs(small_synthetic_data[split], categories=spec, report=report)
        assert report.skipped_records == 0 and report.tied_pairs == 0
        assert report.records == report.pairs == len(pairs) == 4 * pairs_per_category
        assert sorted(set(pairs["category"])) == sorted(spec.categories)
        assert all(row["prompt"][-1]["role"] == "user" for row in pairs)
    records = _read(small_synthetic_data["train"])
    assert {"src", "tgt", "response", "rank", "label"} <= set(records[0])
    assert {r["label"] for r in records} == {"客观知识问答", "闲聊", "文本创作", "角色扮演"}
    assert any(len(r["src"]) == 2 for r in records)  # multi-turn conversations (role-play always, others sometimes)
    with open(small_synthetic_data["world"], encoding="utf-8") as handle:
        world = json.load(handle)
    assert world["train_pairs"] == 60 and "gold_formula" in world["category_definitions"]["chitchat"]
    assert world["categories"]["chitchat"]["train_pairs"] == 15
    prompts = _read(small_synthetic_data["heldout_prompts"])
    assert prompts and {p["category"] for p in prompts} <= set(spec.categories)


def test_side_fields_are_the_truth_recomputed_from_text_and_test_prompts_are_held_out():
    dataset = generate_dataset(pairs_per_category=60, test_pairs_per_category=30, seed=2)
    gold = GoldReward(dataset.world)
    for record in dataset.train + dataset.test:
        prompt = list(_messages(record))
        assert gold(prompts=[prompt, prompt], completions=record["response"]) == record["gold"]
        assert dataset.world.capability_scores(prompt, record["response"][0]) == record["capability_scores"][0]
        better = 0 if record["gold"][0] > record["gold"][1] else 1
        assert record["gold_rank"][better] == 1 and record["gold"][0] != record["gold"][1]
        agrees = record["rank"] == record["gold_rank"]
        assert agrees != record["human_flipped"]
    assert not any(r["human_flipped"] for r in dataset.test)  # the test split is clean
    for category in dataset.world.worlds:
        train_units = {r["item"] for r in dataset.train if r["category_key"] == category}
        test_units = {r["item"] for r in dataset.test if r["category_key"] == category}
        assert train_units and test_units and not train_units & test_units, category


def _messages(record):
    for turn, user in enumerate(record["src"]):
        yield {"role": "user", "content": user}
        if turn < len(record["tgt"]):
            yield {"role": "assistant", "content": record["tgt"][turn]}


@pytest.mark.parametrize("flip_rate", [0.3, 0.1])
def test_human_flip_rate_is_close_to_the_configured_one(flip_rate, tmp_path):
    dataset = generate_dataset(pairs_per_category=1000, test_pairs_per_category=1, human_flip_rate=flip_rate, seed=11)
    n = len(dataset.train)
    pairs = load_preference_pairs(write_dataset(dataset, tmp_path)["train"])  # chosen/rejected as trainers see them
    gold = GoldReward(dataset.world)
    chosen = gold(prompts=pairs["prompt"], completions=pairs["chosen"])
    rejected = gold(prompts=pairs["prompt"], completions=pairs["rejected"])
    measured = sum(c < r for c, r in zip(chosen, rejected)) / n
    assert abs(measured - flip_rate) < 4 * math.sqrt(flip_rate * (1 - flip_rate) / n)  # 4 sigma: ~0.03 at n=4000
    assert dataset.summary["human_flip_rate_measured"] == pytest.approx(measured, abs=1e-4)
    for stats in dataset.summary["categories"].values():  # every category is noisy, not just on average
        assert abs(stats["human_flip_rate_measured"] - flip_rate) < 0.07


def test_module_cli_writes_files_and_rejects_bad_options(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        generate_main(
            [
                "--out",
                str(out),
                "--pairs-per-category",
                "8",
                "--test-pairs-per-category",
                "2",
                "--categories",
                "objective_qa,chitchat",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert "16 training pairs" in capsys.readouterr().out
    assert len(_read(out / "train.jsonl")) == 16 and len(_read(out / "test.jsonl")) == 4
    assert sorted(load_category_spec(out / "categories.yaml").categories) == ["chitchat", "objective_qa"]
    assert generate_main(["--out", str(tmp_path / "bad"), "--human-flip-rate", "1.5"]) == 1
    assert "human_flip_rate=1.5" in capsys.readouterr().err
    assert generate_main(["--out", str(tmp_path / "bad"), "--categories", "poetry"]) == 1
    assert "Unknown synthetic categories" in capsys.readouterr().err
