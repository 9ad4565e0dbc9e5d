"""The pipeline's data (PipelineData): prepared on its own, owned by a pipeline that sets every attribute in __init__."""

from __future__ import annotations

import json

import pytest
from trainer_helpers import quick_args


def _prepared(tmp_path, *extra, state=None):
    from transformers import AutoTokenizer

    from dmoerm_trl.commands.train import parse_config
    from dmoerm_trl.data import DataReport
    from dmoerm_trl.testing_utils import make_tiny_llama
    from dmoerm_trl.trainers.pipeline_data import PipelineData

    backbone = tmp_path / "backbone"
    if not backbone.exists():
        make_tiny_llama(backbone, num_layers=1)
    model_args, data_args, training_args = parse_config(quick_args(tmp_path / "run", *extra))
    (tmp_path / "run").mkdir(exist_ok=True)
    data = PipelineData(model_args, data_args, training_args, tmp_path / "run", DataReport())
    state = state if state is not None else {"stages": {}}
    data.prepare(AutoTokenizer.from_pretrained(backbone), str(backbone), state)
    return data, state


def test_pipeline_data_prepares_splits_and_each_stages_rows_on_its_own(tmp_path):
    from dmoerm_trl.trainers import Stage

    data, state = _prepared(tmp_path)
    # every categorised human pair is in exactly one split of its own category (the uncategorised wait for the router)
    category_of = {pid: c for pid, c in zip(data.human["pair_id"], data.human["category"]) if c}
    assert 0 < len(category_of) <= len(data.human)
    placed = [
        (pid, c)
        for c, split in data.splits.items()
        for name in ("task", "aggregator", "validation")
        for pid in split[name]
    ]
    assert sorted(pid for pid, _ in placed) == sorted(category_of)
    assert all(category_of[pid] == c for pid, c in placed)
    assert json.loads((tmp_path / "run" / "splits.json").read_text()) == data.splits
    assert len(state["splits_fingerprint"]) == 40
    assert data.max_length == 256 and set(data.categories_to_train) == set(data.categories)

    train, validation = data.stage_data(Stage("task", "chitchat"))
    assert set(train["pair_id"]) == set(data.splits["chitchat"]["task"]) and set(train["category"]) == {"chitchat"}
    assert set(validation["pair_id"]) == set(data.splits["chitchat"]["validation"])
    router_train, _ = data.stage_data(Stage("router"))
    assert len(router_train) == sum(len(s["task"]) + len(s["aggregator"]) for s in data.splits.values())
    expert_train, _ = data.stage_data(Stage("capability", "chitchat", "empathy_ability"))
    assert set(expert_train["capability"]) == {"empathy_ability"} and set(expert_train["category"]) == {"chitchat"}
    # the load's counts reach the run's report under the human_ prefix, the labels' under capability_labels_
    counts = data.report.counts
    assert counts["human_records"] > 0 and counts["human_pairs"] >= len(data.human)
    assert counts["capability_labels_pairs"] == counts["capability_labels_read"] > 0
    assert "capability_labels_skipped_records" in counts and all(" " not in key for key in counts)


def test_changed_splits_after_finished_stages_are_refused_before_splits_json_is_rewritten(tmp_path):
    from dmoerm_trl.data import TrainingDataError

    _, state = _prepared(tmp_path)
    before = (tmp_path / "run" / "splits.json").read_text()
    state["stages"] = {"router": {"status": "done"}}
    with pytest.raises(TrainingDataError, match=r"the data or the split settings changed .*--restart true"):
        _prepared(tmp_path, "--task_split_ratio", "0.4", state=state)
    assert (tmp_path / "run" / "splits.json").read_text() == before


def test_the_pipeline_and_its_data_set_every_attribute_in_init(tmp_path, one_thread):
    from dmoerm_trl.commands.train import parse_config
    from dmoerm_trl.trainers import DMoERMTrainingPipeline

    pipeline = DMoERMTrainingPipeline(
        *parse_config(quick_args(tmp_path / "run", "--stages", "router", "--num_train_epochs", "1"))
    )
    attributes, data_attributes = set(vars(pipeline)), set(vars(pipeline.data))
    summary = pipeline.run()
    assert summary["stages"]["router"]["status"] == "done"
    assert set(vars(pipeline)) == attributes and set(vars(pipeline.data)) == data_attributes
    assert pipeline.data.report is pipeline.report and pipeline.data.tokenizer is pipeline.tokenizer
    assert pipeline._model is not None and pipeline.plan[0].kind == "router" and len(pipeline.data.human) > 0
