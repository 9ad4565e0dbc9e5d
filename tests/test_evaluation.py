"""Evaluation: pairwise accuracy (per category, overall, ties), the rank direction, router/expert accuracy, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from dmoerm_trl.evaluation import evaluate_pair_accuracy, evaluate_reward_models, pairwise_accuracy, write_report
from dmoerm_trl.evaluation_stats import wilson_interval

FIXTURES = Path(__file__).parent / "fixtures"
CATEGORIES = {
    "objective_qa": ["correctness", "reasoning_ability"],
    "chitchat": ["empathy_ability", "proactivity"],
    "roleplay": ["character_setting_and_emotional_investment", "conversational_sense"],
}


def test_pairwise_accuracy_per_category_and_overall():
    result = pairwise_accuracy([3.0, 1.0, 2.0, 5.0, 0.0], [1.0, 2.0, 2.0, 4.0, -1.0],
                               ["qa", "qa", "chat", "chat", ""])
    overall = result["overall"]
    assert {k: overall[k] for k in ("accuracy", "correct", "total", "reward_ties")} == {
        "accuracy": 3 / 5, "correct": 3, "total": 5, "reward_ties": 1}
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
    from dmoerm_trl.trainers.preference_data import tokenize_pairs

    # rank 1 is the best answer (mtmc-rlhf); here the best answers are the longest
    records = [
        {"src": ["What is 2 plus 2?"], "tgt": [], "response": [
            "4.", "The answer is 4 because 2 plus 2 equals 4, as everyone learns in school.", "Four, I think."],
         "rank": [3, 1, 2], "label": "客观知识问答"},
        {"src": ["Hi!", "How are you?"], "tgt": ["Hello!"], "response": ["Ok.", "Fine, thanks, and how are you?",
                                                                         "Fine."],
         "rank": [2, 1, 2], "label": "闲聊"},
    ]
    report = LoadReport()
    pairs = load_preference_pairs(write_ranked(tmp_path / "ranked.jsonl", records),
                                  lower_rank_is_better=lower_rank_is_better, report=report)
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
    model = DMoERMForSequenceClassification.from_backbone(tiny_llama_path, CATEGORIES, tokenizer=tiny_tokenizer,
                                                          lora_r=4, lora_alpha=8)
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
        report = evaluate_reward_models(root / "dmoerm", data, labels_path=FIXTURES / "capability_labels_tiny.jsonl",
                                        baseline_path=root / "baseline", batch_size=32)
    finally:
        torch.set_num_threads(threads)
    n = report["num_pairs"]
    assert n > 0 and report["dmoerm"]["overall"]["total"] == n == report["baseline"]["overall"]["total"]
    labelled = sum(entry["total"] for entry in report["dmoerm"]["per_category"].values())
    assert 0 < labelled < n  # the fixture's uncategorised records count in the overall only
    assert set(report["dmoerm"]["per_category"]) <= set(CATEGORIES)
    assert report["router"]["prompt"]["total"] == labelled and report["router"]["full"]["total"] == 2 * labelled
    experts = report["experts"]["per_expert"]
    assert {(c, cap) for c, caps in experts.items() for cap in caps} == {
        (c, cap) for c, caps in CATEGORIES.items() for cap in caps}
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
    code = main(["eval", "--model", str(root / "dmoerm"), "--data", str(data), "--output", str(tmp_path / "out"),
                 "--threads", "1"])
    assert code == 0
    assert "| **overall** |" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"eval_results.json", "eval_results.md",
                                                               "eval_results.png"}


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
    data = write_ranked(tmp_path / "ties.jsonl", [{"src": ["Hi"], "tgt": [], "response": ["a", "b"], "rank": [1, 1],
                                                  "label": "闲聊"}])
    with pytest.raises(ValueError, match="no preference pairs to evaluate"):
        evaluate_reward_models(root / "dmoerm", data)
