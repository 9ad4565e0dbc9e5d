"""The pipeline on data as TRL users have it: no category column (a clear error with the fix), categories mapped
from another column, and a dataset loaded by name from a local data folder."""

from __future__ import annotations

import json

from trainer_helpers import DATA, LABELS, TINY_CONFIG

from dmoerm_trl.commands.train import main as train_main

ORIGIN = {"客观知识问答": "math", "闲聊": "chat", "角色扮演": "play"}


def records():
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def train(output_dir, *extra):
    return train_main(
        [
            "--config",
            str(TINY_CONFIG),
            "--output_dir",
            str(output_dir),
            "--disable_tqdm",
            "true",
            "--logging_steps",
            "50",
            *extra,
        ]
    )


def test_data_without_categories_stops_with_the_way_to_get_them(tmp_path, capsys, one_thread):
    path = write_jsonl(tmp_path / "no_category.jsonl", [{**r, "label": ""} for r in records()])
    code = train(tmp_path / "run", "--dataset_path", str(path), "--stages", "task")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "none of its" in err and "has a category" in err
    assert "category_column" in err and "category_map" in err
    assert "no human pairs" not in err  # the old, misleading per-category message


def test_dataset_name_and_category_map_train_the_router(tmp_path, capsys, one_thread):
    folder = tmp_path / "prefs"
    rows = [{**r, "origin": ORIGIN.get(r["label"], "unknown"), "label": ""} for r in records()]
    write_jsonl(folder / "train.jsonl", rows)
    output = tmp_path / "run"
    code = train(
        output,
        "--dataset_path",
        "",
        "--dataset_name",
        str(folder),
        "--dataset_train_split",
        "train",
        "--category_column",
        "origin",
        "--category_map",
        "math=objective_qa,chat=chitchat,play=roleplay",
        "--capability_labels_path",
        str(LABELS),
        "--stages",
        "router",
        "--num_train_epochs",
        "1",
    )
    assert code == 0, capsys.readouterr().err
    splits = json.loads((output / "splits.json").read_text())
    assert set(splits) == {"objective_qa", "chitchat", "roleplay"}
    summary = json.loads((output / "training_summary.json").read_text())
    counts = summary["data"]["counts"]
    assert counts["human_uncategorised_pairs"] > 0  # the fixture's unlabeled records stay uncategorised, counted
    state = json.loads((output / "pipeline_state.json").read_text())
    assert state["stages"]["router"]["status"] == "done"


def test_dataset_path_and_dataset_name_together_are_refused(tmp_path, capsys):
    code = train(tmp_path / "run", "--dataset_path", str(DATA), "--dataset_name", str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and "both dataset_path" in err and "give one" in err and "Traceback" not in err


def test_the_labeling_step_reads_the_mapped_categories(tmp_path, one_thread):
    import yaml

    from dmoerm_trl.labeling.scripted_judge_server import ScriptedJudgeServer, VerdictJudge

    chat = [r for r in records() if r["label"] == "闲聊"][:6]
    scores = {
        text: {"empathy_ability": float("sorry" in text or "hope" in text), "proactivity": float("?" in text)}
        for r in chat
        for text in r["response"]
    }
    folder = tmp_path / "prefs"
    write_jsonl(folder / "train.jsonl", [{**r, "label": "", "origin": "chat"} for r in chat])
    with ScriptedJudgeServer(VerdictJudge(scores)) as server:
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
        code = train(
            tmp_path / "run",
            "--dataset_path",
            "",
            "--dataset_name",
            str(folder),
            "--category_column",
            "origin",
            "--category_map",
            "chat=chitchat",
            "--capability_labels_path",
            "",
            "--label_config",
            str(label_config),
            "--categories",
            '{"chitchat": ["empathy_ability", "proactivity"]}',
            "--stages",
            "label",
        )
    assert code == 0
    labels_dir = tmp_path / "run" / "labels"
    # the labeler read the loaded pairs with their mapped category (the raw rows have none)
    human = [json.loads(line) for line in (labels_dir / "human_pairs.jsonl").read_text().splitlines()]
    assert human and {row["category"] for row in human} == {"chitchat"}
    labels = [json.loads(line) for line in (labels_dir / "capability_pairs.jsonl").read_text().splitlines()]
    assert labels and {row["category"] for row in labels} == {"chitchat"}


def test_categories_from_the_judge_keep_only_order_consistent_answers(tmp_path, one_thread):
    import re

    import yaml

    from dmoerm_trl.labeling.scripted_judge_server import ScriptedJudgeServer

    readable = {"objective_qa": "objective qa", "chitchat": "chitchat", "roleplay": "roleplay"}
    truth = {
        r["src"][-1]: {"客观知识问答": "objective_qa", "闲聊": "chitchat", "角色扮演": "roleplay"}[r["label"]]
        for r in records()
        if r["label"]
    }
    biased = min(truth)  # for this prompt the judge always answers "1": the two orders disagree

    def judge(body):
        user = body["messages"][-1]["content"]
        if biased in user:
            return "1"
        options = dict(re.findall(r"^(\d+)\. ([a-z ]+)", user, flags=re.MULTILINE))
        category = next(c for text, c in truth.items() if text in user)
        return next(number for number, name in options.items() if name.strip() == readable[category])

    data = write_jsonl(tmp_path / "pairs.jsonl", [{**r, "label": ""} for r in records() if r["src"][-1] in truth])
    with ScriptedJudgeServer(judge) as server:
        label_config = tmp_path / "label.yaml"
        label_config.write_text(
            yaml.safe_dump(
                {"model": "scripted-judge", "base_url": server.base_url, "concurrency": 4, "progress": False}
            )
        )
        args = (
            "--dataset_path",
            str(data),
            "--capability_labels_path",
            str(LABELS),
            "--label_config",
            str(label_config),
            "--categorize_with_judge",
            "true",
            "--stages",
            "router",
            "--num_train_epochs",
            "1",
        )
        assert train(tmp_path / "run", *args) == 0
        calls = server.counts["requests"]
        assert train(tmp_path / "run", *args) == 0  # the rerun reads the judge's answers from the cache
        assert server.counts["requests"] == calls
    conversations = {json.dumps([r["src"], r["tgt"]]) for r in records() if r["src"][-1] in truth}
    assert calls == 2 * len(conversations)  # two orders per distinct prompt
    outcomes = [
        json.loads(line) for line in (tmp_path / "run" / "labels" / "categories.jsonl").read_text().splitlines()
    ]
    assert sum(row["status"] == "inconsistent" for row in outcomes) >= 1
    assert all(row["status"] == "kept" for row in outcomes if row["status"] != "inconsistent")
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert set(splits) == {"objective_qa", "chitchat", "roleplay"}
    counts = json.loads((tmp_path / "run" / "training_summary.json").read_text())["data"]["counts"]
    assert (
        counts["judge_categories_inconsistent"] >= 1
        and counts["judge_categories_kept"] == len(outcomes) - counts["judge_categories_inconsistent"]
    )
    assert 0 < counts["judge_categories_consistency_percent"] < 100
