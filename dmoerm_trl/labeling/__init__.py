"""Capability preference labels from an OpenAI-compatible LLM judge (the paper's position-swap consistency filter).

- :mod:`~dmoerm_trl.labeling.config`: :class:`LabelingConfig`, every option of ``dmoerm label``
- :mod:`~dmoerm_trl.labeling.prompts`: the EN/ZH judge prompts (overridable from YAML) and verdict parsing
- :mod:`~dmoerm_trl.labeling.judge_client`: one request done reliably (cache, retries, backoff, budget)
- :mod:`~dmoerm_trl.labeling.cache`: the SQLite answer cache (reruns make zero calls, killed runs resume)
- :mod:`~dmoerm_trl.labeling.labeler`: :class:`CapabilityLabeler` and :func:`run_labeling`
- :mod:`~dmoerm_trl.labeling.judge_server`: ``dmoerm serve-judge``, an OpenAI-compatible server over a local HF LM
- :mod:`~dmoerm_trl.labeling.scripted_judge_server`: a scripted judge with injected faults, for tests/benchmarks

Example:
    >>> from dmoerm_trl.labeling import LabelingConfig, run_labeling
    >>> config = LabelingConfig(data="data/ranked.jsonl", output="labels", model="gpt-4o-mini", mode="joint")
    >>> result = run_labeling(config)  # needs OPENAI_API_KEY  # doctest: +SKIP
"""

from __future__ import annotations

from .config import LabelingConfig

__all__ = [
    "CapabilityLabeler",
    "LabelCache",
    "LabelingConfig",
    "LabelingResult",
    "load_template",
    "parse_joint_verdict",
    "parse_pairwise_verdict",
    "run_labeling",
]


def __getattr__(name):  # keep `import dmoerm_trl.labeling` light (no openai/datasets until needed)
    if name in ("CapabilityLabeler", "LabelingResult", "run_labeling"):
        from . import labeler

        return getattr(labeler, name)
    if name in ("load_template", "parse_pairwise_verdict", "parse_joint_verdict"):
        from . import prompts

        return getattr(prompts, name)
    if name == "LabelCache":
        from .cache import LabelCache

        return LabelCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
