"""The synthetic world's data and judge labels, as the demo and the benchmarks built on it make them
(``dmoerm demo``, ``benchmarks/demo_sizes.py``, ``benchmarks/fidelity.py``): one place, so that they stay the same.

Example:
    >>> from dmoerm_trl.demo.world import make_world_data  # doctest: +SKIP
    >>> data = make_world_data(["chitchat", "roleplay"], 8, 4, max_capabilities=2, seed=0, out=Path("/tmp/w"))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..utils.io import atomic_write_text


@dataclass
class WorldData:
    """What :func:`make_world_data` made: the world, the categories with the capabilities kept, the dataset, the
    written files (``paths["train"]``, ``paths["test"]``, ...) and the category YAML."""

    world: object
    categories: dict[str, list[str]]
    dataset: object
    paths: dict[str, str]
    categories_yaml: Path


def make_world_data(
    category_names,
    pairs_per_category: int,
    test_pairs_per_category: int,
    *,
    max_capabilities: int,
    seed: int,
    out: Path,
    human_flip_rate: float | None = None,
    categories_file: str = "demo_categories.yaml",
    header: str = "# The demo's category set: the synthetic world's categories, first capabilities (dmoerm demo).\n",
) -> WorldData:
    """Generate the synthetic world's data into ``out/data`` and a category YAML with each category's first
    ``max_capabilities`` capabilities (the experts)."""
    import yaml

    from ..synthetic import SyntheticWorld
    from ..synthetic.generator import SyntheticDataConfig, generate_dataset, write_dataset

    world = SyntheticWorld(category_names)
    categories = {name: caps[:max_capabilities] for name, caps in world.categories.items()}
    options = {"human_flip_rate": human_flip_rate} if human_flip_rate is not None else {}
    dataset = generate_dataset(
        SyntheticDataConfig(
            pairs_per_category=pairs_per_category,
            test_pairs_per_category=test_pairs_per_category,
            categories=category_names,
            seed=seed,
            **options,
        )
    )
    paths = write_dataset(dataset, out / "data")
    categories_yaml = out / "data" / categories_file
    spec = dataclasses.replace(world.category_spec(), categories=categories)
    atomic_write_text(
        categories_yaml, header + yaml.safe_dump(spec.to_yaml_dict(), allow_unicode=True, sort_keys=False)
    )
    return WorldData(world, categories, dataset, paths, categories_yaml)


def label_with_synthetic_judge(
    data: WorldData,
    labels_dir: Path,
    *,
    seed: int,
    flip_rate: float = 0.1,
    api_key: str = "local-demo-judge",
    on_start=None,
):
    """Capability labels of the training pairs from the synthetic judge, served on 127.0.0.1 and asked through the
    real ``openai`` client (per capability, position-swap filtered): ``(LabelingResult, judge answer stats)``.
    ``on_start(base_url)`` is called once the judge serves."""
    from ..labeling import LabelingConfig, run_labeling
    from ..synthetic.judge import capability_judge_server

    with capability_judge_server(data.world, flip_rate=flip_rate, seed=seed, port=0) as server:
        if on_start is not None:
            on_start(server.base_url)
        result = run_labeling(
            LabelingConfig(
                data=data.paths["train"],
                output=str(labels_dir),
                model="synthetic-judge",
                base_url=server.base_url,
                mode="per_capability",
                categories=str(data.categories_yaml),
                concurrency=8,
            ),
            api_key=api_key,
        )
        stats = dict(server.answer.stats)
    return result, stats


def demo_world_data(sizes, seed: int, out: Path) -> WorldData:
    """:func:`make_world_data` at a :class:`~dmoerm_trl.demo.DemoSizes` (the demo's data at its sizes)."""
    return make_world_data(
        sizes.categories,
        sizes.pairs_per_category,
        sizes.test_pairs_per_category,
        max_capabilities=sizes.max_capabilities,
        seed=seed,
        out=out,
    )
