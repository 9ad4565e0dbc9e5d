"""The fidelity benchmark's world and labels (``benchmarks/fidelity.py`` steps 1-2): the synthetic data with its
categories file, and the capability labels from the real labeler against the synthetic judge on 127.0.0.1.

Example:
    >>> from fidelity_world import make_data, label  # doctest: +SKIP
    >>> data, agreement = make_data(args, out)  # doctest: +SKIP
    >>> label(args, data, out)["labels"] > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

from pathlib import Path


def make_data(args, out: Path):
    from dmoerm_trl.demo.world import make_world_data

    data = make_world_data(
        args.categories,
        args.pairs_per_category,
        args.test_pairs_per_category,
        max_capabilities=args.max_capabilities,
        seed=args.seed,
        out=out,
        human_flip_rate=args.human_flip,
        categories_file="fidelity_categories.yaml",
        header="",
    )
    agreement = sum(not r["human_flipped"] for r in data.dataset.train) / max(1, len(data.dataset.train))
    return data, agreement


def label(args, data, out: Path) -> dict:
    from dmoerm_trl.demo.world import label_with_synthetic_judge

    result, _ = label_with_synthetic_judge(
        data, out / "labels", seed=args.seed, flip_rate=args.judge_flip, api_key="local-fidelity-judge"
    )
    return {
        "calls": result.summary.get("calls"),
        "cache_hits": result.summary.get("cache_hits"),
        "labels": len(result.labels),
        "path": str(out / "labels" / "capability_pairs.jsonl"),
    }
