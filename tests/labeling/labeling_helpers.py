"""Helpers for the labeling tests: a small ranked data set whose per-capability truth is known, and utilities."""

from __future__ import annotations

import http.client
import json
import random
from types import SimpleNamespace

JUDGE_NAME = "tiny-judge"  # the served name of the tiny local judge (conftest.py's judge servers)
CATEGORIES = {"objective_qa": ["correctness", "logic", "depth"], "chitchat": ["empathy", "fluency"]}
CATEGORY_YAML = """\
categories:
  objective_qa:
    aliases: [客观知识问答]
    capabilities:
      correctness: {zh: 正确性, description: is factually correct}
      logic: {zh: 逻辑性}
      depth: {zh: 知识面深度}
  chitchat:
    aliases: [闲聊]
    capabilities:
      empathy: {zh: 共情能力}
      fluency: {zh: 流畅度}
"""
ZH_NAMES = {
    "正确性": "correctness",
    "逻辑性": "logic",
    "知识面深度": "depth",
    "共情能力": "empathy",
    "流畅度": "fluency",
}


def make_labeling_data(directory, records: int = 12, responses: int = 3, seed: int = 0):
    """Ranked records (some multi-turn) and a score per (response text, capability): the judge's known truth."""
    rng = random.Random(seed)
    rows, scores = [], {}
    for i in range(records):
        category = ["客观知识问答", "闲聊"][i % 2]
        turns = 1 + i % 3
        src = [f"user turn {t} of dialogue {i}" for t in range(turns)]
        tgt = [f"assistant turn {t} of dialogue {i}" for t in range(turns - 1)]
        candidates = [f"candidate {j} for dialogue {i}" for j in range(responses)]
        for text in candidates:
            scores[text] = {c: rng.random() for caps in CATEGORIES.values() for c in caps}
        rows.append(
            {
                "src": src,
                "tgt": tgt,
                "response": candidates,
                "rank": rng.sample(range(1, responses + 1), responses),
                "label": category,
            }
        )
    data = directory / "ranked.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    categories = directory / "categories.yaml"
    categories.write_text(CATEGORY_YAML, encoding="utf-8")
    pairs_per_record = responses * (responses - 1) // 2
    per_category = {"objective_qa": (records + 1) // 2 * pairs_per_record, "chitchat": records // 2 * pairs_per_record}
    return SimpleNamespace(
        data=str(data),
        categories=str(categories),
        scores=scores,
        pairs=per_category,
        requests={
            "per_capability": sum(2 * len(CATEGORIES[c]) * n for c, n in per_category.items()),
            "joint": 2 * sum(per_category.values()),
        },
    )


def expected_labels(data, *, skip=()):
    """The label set a consistent judge must produce: (category, capability, last user turn, chosen, rejected)."""
    from dmoerm_trl.data import load_preference_pairs

    labels = set()
    for pair in load_preference_pairs(data.data, categories=data.categories):
        a, b = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        for capability in CATEGORIES[pair["category"]]:
            if capability in skip or data.scores[a][capability] == data.scores[b][capability]:
                continue
            better, worse = (a, b) if data.scores[a][capability] > data.scores[b][capability] else (b, a)
            labels.add((pair["category"], capability, pair["prompt"][-1]["content"], better, worse))
    return labels


def label_set(rows):
    return {
        (
            r["category"],
            r["capability"],
            r["prompt"][-1]["content"],
            r["chosen"][-1]["content"],
            r["rejected"][-1]["content"],
        )
        for r in rows
    }


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def fast_config(data, output, server, **overrides):
    """A LabelingConfig for the scripted server: short timeouts and backoff so fault tests stay fast."""
    from dmoerm_trl.labeling import LabelingConfig

    options = {
        "data": data.data,
        "output": str(output),
        "model": "scripted-judge",
        "base_url": server.base_url,
        "categories": data.categories,
        "timeout": 0.5,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "max_retries": 6,
        "concurrency": 8,
        "progress": False,
    }
    options.update(overrides)
    return LabelingConfig(**options)


def judge_config(data, output, server, mode, **overrides):
    """A LabelingConfig for a `serve-judge` server on the tiny judge: short answers, no progress bar, the labeler's
    defaults for everything else (concurrency, timeouts, retries) unless ``overrides`` set them."""
    from dmoerm_trl.labeling import LabelingConfig

    options = {
        "data": data.data,
        "output": str(output),
        "model": JUDGE_NAME,
        "mode": mode,
        "base_url": server.base_url,
        "categories": data.categories,
        "max_completion_tokens": 8,
        "progress": False,
    }
    options.update(overrides)
    return LabelingConfig(**options)


def http_request(server, method: str, path: str, body: bytes | None = None, headers=None, timeout: float = 30):
    """``(status, headers, JSON payload)`` of one plain HTTP request to ``server`` (no client-side checks)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    connection.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
    response = connection.getresponse()
    result = response.status, dict(response.getheaders()), json.loads(response.read() or b"{}")
    connection.close()
    return result
