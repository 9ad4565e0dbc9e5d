"""The optional labeling step of the pipeline: capability labels from an OpenAI-compatible judge (real HTTP to the
scripted judge server on 127.0.0.1), then phase 2 trains on them."""

from __future__ import annotations

import json

import pytest
import yaml
from trainer_helpers import DATA, quick_args

from dmoerm_trl.commands.train import main as train_main


def chitchat_scores(records):
    """Per-response capability scores the judge answers from: empathy = kind words, proactivity = a question."""
    scores = {}
    for record in records:
        for text in record["response"]:
            scores[text] = {
                "empathy_ability": float("sorry" in text or "hope" in text),
                "proactivity": float("?" in text),
            }
    return scores


def test_pipeline_labels_then_trains_the_experts(tmp_path, one_thread):
    from dmoerm_trl.labeling.scripted_judge_server import ScriptedJudgeServer, VerdictJudge

    records = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    records = [r for r in records if r["label"] == "闲聊"][:14]
    data = tmp_path / "chitchat.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    with ScriptedJudgeServer(VerdictJudge(chitchat_scores(records))) as server:
        label_config = tmp_path / "label.yaml"
        label_config.write_text(
            yaml.safe_dump(
                {
                    "model": "scripted-judge",
                    "base_url": server.base_url,
                    "mode": "joint",
                    "concurrency": 4,
                    "progress": False,
                }
            )
        )
        args = quick_args(
            tmp_path / "run",
            "--dataset_path",
            str(data),
            "--capability_labels_path",
            "",
            "--label_config",
            str(label_config),
            "--categories",
            '{"chitchat": ["empathy_ability", "proactivity"]}',
            "--stages",
            "label,task,capability",
            "--min_capability_labels",
            "4",
            "--validation_split_ratio",
            "0.2",
            "--num_train_epochs",
            "1",
            "--train_baseline",
            "false",
        )
        assert train_main(args) == 0
        labels_file = tmp_path / "run" / "labels" / "capability_pairs.jsonl"
        labels = [json.loads(line) for line in labels_file.read_text(encoding="utf-8").splitlines()]
        state = json.loads((tmp_path / "run" / "pipeline_state.json").read_text())["stages"]
        # a second run reuses the labels (finished stage), and nothing is relabelled or retrained
        assert train_main(args) == 0
        assert json.loads((tmp_path / "run" / "pipeline_state.json").read_text())["stages"] == state
    assert labels and {row["capability"] for row in labels} == {"empathy_ability", "proactivity"}
    for row in labels:  # the judge's verdicts survived the swap-consistency filter the right way round
        score = chitchat_scores(records)
        assert (
            score[row["chosen"][0]["content"]][row["capability"]]
            > score[row["rejected"][0]["content"]][row["capability"]]
        )
    assert state["label"]["status"] == "done" and state["label"]["labels"] == len(labels)
    for capability in ("empathy_ability", "proactivity"):
        assert state[f"capability/chitchat/{capability}"]["status"] == "done"


def test_a_label_config_that_is_not_yaml_is_one_line_naming_it(tmp_path):
    from dmoerm_trl.data.errors import TrainingDataError
    from dmoerm_trl.trainers.labeling_step import _labeling_config

    broken = tmp_path / "label.yaml"
    broken.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(TrainingDataError, match=r"label\.yaml: not valid YAML \(.*\)\. Fix the YAML syntax") as caught:
        _labeling_config(str(broken))
    assert "\n" not in str(caught.value)
