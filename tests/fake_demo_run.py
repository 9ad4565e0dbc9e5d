"""A fake finished ``benchmarks/demo_sizes.py`` run built from the synthetic world's own test records (shared by the
tests of ``benchmarks/expert_truth.py`` and ``benchmarks/capability_probe.py``)."""

from __future__ import annotations

import json
from pathlib import Path

CAPABILITIES = {"objective_qa": ["correctness", "objectiveness"], "chitchat": ["empathy_ability", "proactivity"]}


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def fake_run(folder: Path, sign: float) -> Path:
    """A run whose experts' rewards (and judge labels) are ``sign`` x the truth; the last test pair is misrouted."""
    from dmoerm_trl.synthetic.generator import _messages, generate_dataset

    tests = generate_dataset(pairs_per_category=0, test_pairs_per_category=12, categories=list(CAPABILITIES)).test
    examples, labels = [], []
    for index, test in enumerate(tests):
        best, worst = test["gold_rank"].index(1), test["gold_rank"].index(2)
        category = test["category_key"]
        rewards = [{c: sign * test["capability_scores"][i][c] for c in CAPABILITIES[category]} for i in (best, worst)]
        examples.append(
            {
                "category": category,
                "routed_category": category if index < len(tests) - 1 else "elsewhere",
                "chosen_capability_rewards": rewards[0],
                "rejected_capability_rewards": rewards[1],
            }
        )
        for capability in CAPABILITIES[category]:
            high, low = sorted((best, worst), key=lambda i: -sign * test["capability_scores"][i][capability])
            labels.append(
                {
                    "prompt": _messages(test["src"], test["tgt"]),
                    "chosen": [{"role": "assistant", "content": test["response"][high]}],
                    "rejected": [{"role": "assistant", "content": test["response"][low]}],
                    "category": category,
                    "capability": capability,
                }
            )
    write_jsonl(folder / "data" / "test.jsonl", tests)
    write_jsonl(folder / "eval_gold" / "eval_examples.jsonl", examples)
    write_jsonl(folder / "labels" / "capability_pairs.jsonl", labels)
    return folder
