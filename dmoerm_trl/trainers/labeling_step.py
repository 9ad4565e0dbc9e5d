"""The pipeline's optional first step: capability labels from an OpenAI-compatible LLM judge (``dmoerm label``).

Example:
    >>> from dmoerm_trl.data import load_category_spec
    >>> from dmoerm_trl.trainers.labeling_step import label_capabilities
    >>> summary = label_capabilities("label.yaml", "data/mtmc_train.jsonl", load_category_spec("paper"),  # doctest: +SKIP
    ...                              "runs/dmoerm")
    >>> summary["labels"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.errors import TrainingDataError
from ..utils.io import atomic_write_text

logger = logging.getLogger(__name__)

CATEGORIES_FILE = "categories.jsonl"


def label_capabilities(label_config: str, dataset_path: str, spec, output_dir, lower_rank_is_better: bool = True):
    """Label ``dataset_path`` with the options of ``label_config`` (a YAML of ``dmoerm label`` options) and the
    category set ``spec``; labels go to ``<output_dir>/labels/``. Returns the labeler's summary.

    Raises :class:`TrainingDataError` for a bad options file and when labeling did not finish (budget, failures):
    rerunning continues from the labeler's cache.
    """
    import yaml

    from ..labeling.labeler import run_labeling

    output_dir = Path(output_dir)
    # The training data is read with the paper's Chinese category names mapped to keys; give the labeler (which
    # reads categories strictly) the same aliases.
    from dataclasses import replace

    from ..data.categories import PAPER_CATEGORY_NAMES_ZH

    aliases = {PAPER_CATEGORY_NAMES_ZH[key]: key for key in spec.categories if key in PAPER_CATEGORY_NAMES_ZH}
    spec = replace(spec, aliases={**aliases, **spec.aliases})
    categories_file = output_dir / "categories.yaml"
    atomic_write_text(categories_file, yaml.safe_dump(spec.to_yaml_dict(), allow_unicode=True, sort_keys=False))
    config = _labeling_config(
        label_config,
        data=dataset_path,
        output=str(output_dir / "labels"),
        categories=str(categories_file),
        lower_rank_is_better=lower_rank_is_better,
    )
    logger.info("Labeling the capability preferences of %s with the judge %s", config.data, config.model)
    summary = run_labeling(config).summary
    if summary["aborted"] or not summary["complete"]:
        raise TrainingDataError(
            f"capability labeling did not finish ({summary['aborted'] or 'budget reached or requests failed'}); the "
            f"labels so far are in {output_dir / 'labels'}. Rerun the same command to continue from the cache."
        )
    return summary


def _labeling_config(label_config: str, **fixed):
    """The :class:`LabelingConfig` of a ``label_config`` YAML, with the pipeline's own values in ``fixed``."""
    from ..labeling.config import LabelingConfig
    from ..paths import read_yaml_file

    options = read_yaml_file(label_config, TrainingDataError) or {}
    if not isinstance(options, dict) or "api_key" in options:
        raise TrainingDataError(
            f"{label_config}: must be a mapping of `dmoerm label` options, without api_key (the key is read from the "
            "environment variable named by api_key_env)"
        )
    try:
        return LabelingConfig(**{**options, **fixed})
    except (TypeError, ValueError) as err:
        raise TrainingDataError(f"{label_config}: {err}") from None


def categorize_prompts(label_config: str, prompts, spec, output_dir) -> dict:
    """Ask the judge of ``label_config`` for the category of each distinct prompt (two orders of the category list,
    kept when both agree; see :mod:`dmoerm_trl.labeling.categorizer`). Writes ``<output_dir>/labels/categories.jsonl``
    (one row per prompt: key, category or null, both answers, status) and returns the report."""
    from ..data import write_jsonl_atomic
    from ..labeling.categorizer import classify_prompts

    labels_dir = Path(output_dir) / "labels"
    config = _labeling_config(label_config, data="", output=str(labels_dir))
    logger.info(
        "Classifying %d prompt(s) into %s with the judge %s", len(prompts), list(spec.categories), config.model
    )
    result = classify_prompts(config, prompts, spec)
    write_jsonl_atomic(result.outcomes, labels_dir / CATEGORIES_FILE)
    report = result.report
    logger.info(
        "Judge categories: %d of %d prompts kept (consistency %s; %d inconsistent, %d undecided, %d failed): %s",
        report["kept"],
        report["prompts"],
        report["consistency"],
        report["inconsistent"],
        report["undecided"],
        report["failed"],
        report["per_category"],
    )
    return report
