"""The fidelity benchmark's world and labels (``benchmarks/fidelity.py`` steps 1-2): the synthetic data with its
categories file, and the capability labels from the real labeler against the synthetic judge on 127.0.0.1.

Example:
    >>> from fidelity_world import make_data, label  # doctest: +SKIP
    >>> world, categories, paths, categories_yaml, agreement, n_train, n_test = make_data(args, out)  # doctest: +SKIP
    >>> label(args, world, paths, categories_yaml, out)["labels"] > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

from pathlib import Path


def make_data(args, out: Path):
    import dataclasses

    import yaml

    from dmoerm_trl.synthetic import SyntheticWorld
    from dmoerm_trl.synthetic.generator import SyntheticDataConfig, generate_dataset, write_dataset
    from dmoerm_trl.utils.io import atomic_write_text

    world = SyntheticWorld(args.categories)
    categories = {name: caps[: args.max_capabilities] for name, caps in world.categories.items()}
    dataset = generate_dataset(
        SyntheticDataConfig(
            pairs_per_category=args.pairs_per_category,
            test_pairs_per_category=args.test_pairs_per_category,
            categories=args.categories,
            human_flip_rate=args.human_flip,
            seed=args.seed,
        )
    )
    paths = write_dataset(dataset, out / "data")
    spec = dataclasses.replace(world.category_spec(), categories=categories)
    categories_yaml = out / "data" / "fidelity_categories.yaml"
    atomic_write_text(categories_yaml, yaml.safe_dump(spec.to_yaml_dict(), allow_unicode=True, sort_keys=False))
    agreement = sum(not r["human_flipped"] for r in dataset.train) / max(1, len(dataset.train))
    return world, categories, paths, categories_yaml, agreement, len(dataset.train), len(dataset.test)


def label(args, world, paths, categories_yaml, out: Path) -> dict:
    from dmoerm_trl.labeling import LabelingConfig, run_labeling
    from dmoerm_trl.synthetic.judge import capability_judge_server

    with capability_judge_server(world, flip_rate=args.judge_flip, seed=args.seed, port=0) as server:
        result = run_labeling(
            LabelingConfig(
                data=paths["train"],
                output=str(out / "labels"),
                model="synthetic-judge",
                base_url=server.base_url,
                mode="per_capability",
                categories=str(categories_yaml),
                concurrency=8,
            ),
            api_key="local-fidelity-judge",
        )
    return {
        "calls": result.summary.get("calls"),
        "cache_hits": result.summary.get("cache_hits"),
        "labels": len(result.labels),
        "path": str(out / "labels" / "capability_pairs.jsonl"),
    }
