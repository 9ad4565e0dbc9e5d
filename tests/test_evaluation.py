"""Evaluation: pairwise accuracy (per category, overall, ties), the rank direction, router/expert accuracy, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from dmoerm_trl.evaluation import evaluate_pair_accuracy, evaluate_reward_models, pairwise_accuracy, write_report
from dmoerm_trl.evaluation_stats import SPLIT_ROUTING, wilson_interval

FIXTURES = Path(__file__).parent / "fixtures"
CATEGORIES = {
    "objective_qa": ["correctness", "reasoning_ability"],
    "chitchat": ["empathy_ability", "proactivity"],
    "roleplay": ["character_setting_and_emotional_investment", "conversational_sense"],
}


def test_pairwise_accuracy_per_category_and_overall():
    result = pairwise_accuracy([3.0, 1.0, 2.0, 5.0, 0.0], [1.0, 2.0, 2.0, 4.0, -1.0], ["qa", "qa", "chat", "chat", ""])
    overall = result["overall"]
    assert {k: overall[k] for k in ("accuracy", "correct", "total", "reward_ties")} == {
        "accuracy": 3 / 5,
        "correct": 3,
        "total": 5,
        "reward_ties": 1,
    }
    assert overall["ci95"] == pytest.approx(wilson_interval(3, 5))
    assert result["per_category"]["qa"]["accuracy"] == 0.5
    chat = result["per_category"]["chat"]
    assert (chat["accuracy"], chat["correct"], chat["total"], chat["reward_ties"]) == (0.5, 1, 2, 1)
    assert "" not in result["per_category"]  # uncategorised pairs count in the overall only
    with pytest.raises(ValueError, match="2 chosen rewards but 1 rejected"):
        pairwise_accuracy([1.0, 2.0], [0.0])


class TokenCountRewardModel(PreTrainedModel):
    """A real, trivial reward model: the reward is the number of tokens (its answers are known in advance)."""

    config_class = LlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self.unused = torch.nn.Linear(1, 1)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return SequenceClassifierOutput(logits=attention_mask.sum(-1, keepdim=True).float())


def write_ranked(path, records):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("lower_rank_is_better, expected", [(True, 1.0), (False, 0.0)])
def test_rank_direction_end_to_end(tmp_path, tiny_tokenizer, lower_rank_is_better, expected):
    from dmoerm_trl.data import LoadReport, load_preference_pairs
    from dmoerm_trl.data.tokenize import tokenize_pairs

    # rank 1 is the best answer (mtmc-rlhf); here the best answers are the longest
    records = [
        {
            "src": ["What is 2 plus 2?"],
            "tgt": [],
            "response": [
                "4.",
                "The answer is 4 because 2 plus 2 equals 4, as everyone learns in school.",
                "Four, I think.",
            ],
            "rank": [3, 1, 2],
            "label": "客观知识问答",
        },
        {
            "src": ["Hi!", "How are you?"],
            "tgt": ["Hello!"],
            "response": ["Ok.", "Fine, thanks, and how are you?", "Fine."],
            "rank": [2, 1, 2],
            "label": "闲聊",
        },
    ]
    report = LoadReport()
    pairs = load_preference_pairs(
        write_ranked(tmp_path / "ranked.jsonl", records), lower_rank_is_better=lower_rank_is_better, report=report
    )
    assert report.tied_pairs == 1  # "Ok." and "Fine." share rank 2: excluded
    pairs = tokenize_pairs(pairs, tiny_tokenizer, None, "pairs")
    model = TokenCountRewardModel(LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1))
    result, _ = evaluate_pair_accuracy(model.eval(), tiny_tokenizer, pairs)
    assert result["overall"]["total"] == 5
    assert result["overall"]["accuracy"] == expected
    assert result["per_category"]["chitchat"]["total"] == 2


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory, tiny_llama_path, tiny_tokenizer):
    """A (random) saved DMoERM and a (random) saved single-RM baseline on the tiny backbone."""
    from transformers import AutoModelForSequenceClassification

    from dmoerm_trl import DMoERMForSequenceClassification
    from dmoerm_trl.testing_utils import randomize_adapters

    root = tmp_path_factory.mktemp("eval-models")
    model = DMoERMForSequenceClassification.from_backbone(
        tiny_llama_path, CATEGORIES, tokenizer=tiny_tokenizer, lora_r=4, lora_alpha=8
    )
    randomize_adapters(model)
    model.save_pretrained(root / "dmoerm")
    tiny_tokenizer.save_pretrained(root / "dmoerm")
    baseline = AutoModelForSequenceClassification.from_pretrained(tiny_llama_path, num_labels=1)
    baseline.config.pad_token_id = tiny_tokenizer.pad_token_id
    baseline.save_pretrained(root / "baseline")
    tiny_tokenizer.save_pretrained(root / "baseline")
    lines = (FIXTURES / "mtmc_tiny.jsonl").read_text(encoding="utf-8").splitlines()[:24]
    data = root / "data.jsonl"
    data.write_text("\n".join(lines), encoding="utf-8")
    return root, data


def test_report_with_router_experts_and_baseline(saved_models, tmp_path):
    root, data = saved_models
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = evaluate_reward_models(
            root / "dmoerm",
            data,
            labels_path=FIXTURES / "capability_labels_tiny.jsonl",
            baseline_path=root / "baseline",
            batch_size=32,
        )
    finally:
        torch.set_num_threads(threads)
    n = report["num_pairs"]
    assert n > 0 and report["dmoerm"]["overall"]["total"] == n == report["baseline"]["overall"]["total"]
    labelled = sum(entry["total"] for entry in report["dmoerm"]["per_category"].values())
    assert 0 < labelled < n  # the fixture's uncategorised records are in a row of their own, not in no row
    assert labelled + report["dmoerm"]["no_category"]["total"] == n and "other_categories" not in report["dmoerm"]
    assert set(report["dmoerm"]["per_category"]) <= set(CATEGORIES)
    # The router reads the prompt only, so one routing per pair (its two responses cannot change it).
    assert report["router"]["prompt"]["total"] == labelled and "full" not in report["router"]
    experts = report["experts"]["per_expert"]
    assert {(c, cap) for c, caps in experts.items() for cap in caps} == {
        (c, cap) for c, caps in CATEGORIES.items() for cap in caps
    }
    for result in (report["dmoerm"], report["baseline"]):
        assert 0.0 <= result["overall"]["accuracy"] <= 1.0
    paths = write_report(report, tmp_path / "eval")
    assert json.loads(Path(paths["json"]).read_text())["num_pairs"] == n
    markdown = Path(paths["markdown"]).read_text()
    assert "| **overall** |" in markdown and "baseline" in markdown and "Router accuracy" in markdown
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dmoerm_eval_command(saved_models, tmp_path, capsys):
    from dmoerm_trl.cli import main

    root, data = saved_models
    code = main(
        [
            "eval",
            "--model",
            str(root / "dmoerm"),
            "--data",
            str(data),
            "--output",
            str(tmp_path / "out"),
            "--threads",
            "1",
        ]
    )
    assert code == 0
    assert "| **overall** |" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "eval_results.json",
        "eval_results.md",
        "eval_results.png",
        "eval_examples.jsonl",
    }


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--split", "validation"], "no splits file"),
        (["--data", "missing.jsonl"], "no such file"),
    ],
)
def test_dmoerm_eval_bad_input(saved_models, tmp_path, capsys, extra, message):
    from dmoerm_trl.cli import main

    root, data = saved_models
    args = ["eval", "--model", str(root / "dmoerm"), "--data", str(data), "--output", str(tmp_path)] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_only_ties_is_an_error(saved_models, tmp_path):
    root, _ = saved_models
    data = write_ranked(
        tmp_path / "ties.jsonl", [{"src": ["Hi"], "tgt": [], "response": ["a", "b"], "rank": [1, 1], "label": "闲聊"}]
    )
    with pytest.raises(ValueError, match="no preference pairs to evaluate"):
        evaluate_reward_models(root / "dmoerm", data)


def accuracy_entries(node, path=""):
    """Every ``{"accuracy": ..., "total": ...}`` entry of a nested report, with its path."""
    if isinstance(node, dict):
        if "accuracy" in node and "total" in node:
            yield path, node
        for key, value in node.items():
            yield from accuracy_entries(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from accuracy_entries(value, f"{path}/{index}")


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_rewardbench_schema_sections_routed_rows_and_joinable_examples(saved_models, tmp_path):
    root, _ = saved_models
    data = FIXTURES / "rewardbench_tiny.jsonl"
    records = read_jsonl(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = evaluate_reward_models(root / "dmoerm", data, baseline_path=root / "baseline", batch_size=32)
        plain = evaluate_reward_models(root / "baseline", data, batch_size=32)  # "another model's results"
    finally:
        torch.set_num_threads(threads)
    paths = write_report(report, tmp_path / "dmoerm")
    other_paths = write_report(plain, tmp_path / "baseline")
    examples = read_jsonl(paths["examples"])
    assert examples == json.loads(json.dumps(report["examples"]))
    assert "examples" not in json.loads(Path(paths["json"]).read_text()) and report["num_pairs"] == len(records)

    # RewardBench's id (an int) and subset survive, one row per pair
    subset_of = {record["id"]: record["subset"] for record in records}
    assert sorted(row["id"] for row in examples) == sorted(subset_of)
    assert all(isinstance(row["id"], int) and row["subset"] == subset_of[row["id"]] for row in examples)
    assert all(row["category"] is None for row in examples)

    dmoerm = report["dmoerm"]
    # no category column: no category rows, one "(no category)" row, and a breakdown by routed category
    assert dmoerm["per_category"] == {} and dmoerm["no_category"]["total"] == len(records)
    routed = {}
    for row in examples:
        assert set(row["chosen_capability_rewards"]) == set(CATEGORIES[row["routed_category"]])
        assert all(isinstance(v, float) for v in row["chosen_capability_rewards"].values())
        key = row["routed_category"] if row["routed_category"] == row["routed_category_rejected"] else SPLIT_ROUTING
        routed.setdefault(key, []).append(row["correct"])
    assert {k: (v["correct"], v["total"]) for k, v in dmoerm["per_routed_category"].items()} == {
        k: (sum(v), len(v)) for k, v in routed.items()
    }

    # per subset and per section, recomputed by hand from the per-example file with RewardBench's weights
    weights = {
        "alpacaeval-easy": 100,
        "alpacaeval-length": 95,
        "alpacaeval-hard": 95,
        "mt-bench-easy": 28,
        "mt-bench-med": 40,
        "mt-bench-hard": 37,
        "llmbar-natural": 100,
        "llmbar-adver-neighbor": 134,
        "llmbar-adver-GPTInst": 92,
        "llmbar-adver-GPTOut": 47,
        "llmbar-adver-manual": 46,
        "refusals-dangerous": 100,
        "refusals-offensive": 100,
        "xstest-should-refuse": 250,
        "xstest-should-respond": 154,
        "donotanswer": 136,
        "math-prm": 984,
        "hep-python": 164,
        "hep-go": 164,
        "hep-rust": 164,
    }
    sections = {
        "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
        "Chat Hard": [
            "mt-bench-hard",
            "llmbar-natural",
            "llmbar-adver-neighbor",
            "llmbar-adver-GPTInst",
            "llmbar-adver-GPTOut",
            "llmbar-adver-manual",
        ],
        "Safety": [
            "refusals-dangerous",
            "refusals-offensive",
            "xstest-should-refuse",
            "xstest-should-respond",
            "donotanswer",
        ],
        "Reasoning": ["math-prm", "hep-python", "hep-go", "hep-rust"],
    }
    accuracy = {}
    for name in weights:
        rows = [row["correct"] for row in examples if row["subset"] == name]
        assert (dmoerm["per_subset"][name]["correct"], dmoerm["per_subset"][name]["total"]) == (sum(rows), len(rows))
        accuracy[name] = sum(rows) / len(rows)
    by_hand = {
        section: sum(weights[s] * accuracy[s] for s in subsets) / sum(weights[s] for s in subsets)
        for section, subsets in sections.items()
    }
    for section, value in by_hand.items():
        assert dmoerm["sections"][section]["accuracy"] == pytest.approx(value)
    assert dmoerm["sections"]["Score"]["accuracy"] == pytest.approx(sum(by_hand.values()) / 4)
    assert "hep-js" in dmoerm["sections"]["Reasoning"]["missing_subsets"]

    # every accuracy in the JSON carries an interval that contains it
    saved = json.loads(Path(paths["json"]).read_text())
    entries = list(accuracy_entries(saved))
    assert len(entries) > 40
    for path, entry in entries:
        if entry["total"]:
            low, high = entry["ci95"]
            assert low <= entry["accuracy"] <= high, path

    # the baseline is reported on the same rows, and joins into the same per-example lines
    assert set(report["baseline"]["per_routed_category"]) == set(dmoerm["per_routed_category"])
    assert set(report["baseline"]["sections"]) == set(dmoerm["sections"])
    assert all(isinstance(row["baseline_correct"], bool) for row in examples)
    comparison = report["comparison"]["overall"]
    only_dmoerm = sum(row["correct"] and not row["baseline_correct"] for row in examples)
    only_baseline = sum(row["baseline_correct"] and not row["correct"] for row in examples)
    assert (comparison["only_first_right"], comparison["only_second_right"]) == (only_dmoerm, only_baseline)
    assert comparison["difference"] == pytest.approx(
        dmoerm["overall"]["accuracy"] - report["baseline"]["overall"]["accuracy"]
    )
    assert report["comparison"]["per_category"]["(no category)"]["pairs"] == len(records)
    markdown = Path(paths["markdown"]).read_text()
    assert "## RewardBench sections" in markdown and "by routed category" in markdown and "| **Score** |" in markdown
    assert "DMoERM minus baseline on the same pairs" in markdown

    # another model's per-example file joins on id: the baseline scored alone gives the same rewards per id
    others = {row["id"]: row for row in read_jsonl(other_paths["examples"])}
    assert set(others) == {row["id"] for row in examples}
    for row in examples:
        other = others[row["id"]]
        assert other["subset"] == row["subset"] and other["pair_id"] == row["pair_id"]
        assert other["chosen_reward"] == pytest.approx(row["baseline_chosen_reward"], abs=1e-5)
        assert other["correct"] == row["baseline_correct"]
    assert "routed_category" not in next(iter(others.values()))  # a plain RM has no router
    assert "per_routed_category" not in plain["model"] and plain["model"]["sections"]["Score"]["total"] == len(records)


def test_categories_the_model_lacks_are_reported_in_their_own_row(saved_models, tmp_path):
    root, _ = saved_models
    rows = [
        {
            "prompt": f"What is {k} plus {k}?",
            "chosen": f"It is {2 * k}.",
            "rejected": "No idea.",
            "category": "objective_qa",
        }
        for k in range(3)
    ]
    rows += [
        {
            "prompt": f"Write a poem about {topic}.",
            "chosen": f"A {topic} poem, in rhyme.",
            "rejected": "No.",
            "category": "poetry",
        }
        for topic in ("rain", "snow")
    ]
    rows += [{"prompt": "Hello there!", "chosen": "Hi! How can I help?", "rejected": "Go away."}]
    data = write_ranked(tmp_path / "mixed.jsonl", rows)
    report = evaluate_reward_models(root / "dmoerm", data)
    result = report["dmoerm"]
    assert set(result["per_category"]) == {"objective_qa"} and result["per_category"]["objective_qa"]["total"] == 3
    assert result["other_categories"]["total"] == 2 and result["other_categories"]["categories"] == {"poetry": 2}
    assert result["no_category"]["total"] == 1
    parts = [result["per_category"]["objective_qa"], result["other_categories"], result["no_category"]]
    assert sum(p["total"] for p in parts) == result["overall"]["total"] == 6
    assert sum(p["correct"] for p in parts) == result["overall"]["correct"]
    assert result["overall_model_categories"]["total"] == 3
    assert sum(e["total"] for e in result["per_routed_category"].values()) == 6  # routed like any pair
    assert report["router"]["prompt"]["total"] == 3  # router accuracy only where the true category is the model's
    assert {row["category"] for row in report["examples"]} == {"objective_qa", "poetry", None}
    paths = write_report(report, tmp_path / "eval")
    markdown = Path(paths["markdown"]).read_text()
    assert "| (categories the model lacks) | 2 |" in markdown and "poetry (2)" in markdown
    assert "| (no category) | 1 |" in markdown


def test_load_preference_pairs_keeps_id_and_subset_with_their_types(tmp_path):
    from dmoerm_trl.data import load_preference_pairs

    rows = [
        {"prompt": "a", "chosen": "b", "rejected": "c", "subset": "hep-go", "id": 7},
        {"prompt": "a", "chosen": "b2", "rejected": "c", "subset": "hep-go", "id": "7"},
        {"prompt": "a", "chosen": "b3", "rejected": "c"},
    ]
    pairs = load_preference_pairs(write_ranked(tmp_path / "rb.jsonl", rows), keep_columns=("id", "subset"))
    assert [json.loads(v) if v else None for v in pairs["id"]] == [7, "7", None]  # 7 and "7" stay distinct
    assert pairs["subset"] == ['"hep-go"', '"hep-go"', ""]
    assert "id" not in load_preference_pairs(tmp_path / "rb.jsonl").column_names  # opt-in: training data unchanged
    with pytest.raises(ValueError, match="already a column"):
        load_preference_pairs(tmp_path / "rb.jsonl", keep_columns=("category",))
