"""A stage of the DMoERM pipeline (one Trainer run), and building models outside DeepSpeed's ``zero.Init``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One Trainer run of the pipeline."""

    kind: str  # router | task | capability | aggregator | baseline
    category: str | None = None
    capability: str | None = None

    @property
    def name(self) -> str:
        return "/".join(part for part in (self.kind, self.category, self.capability) if part)

    @property
    def dirname(self) -> str:
        from ..models.dmoerm.configuration_dmoerm import slugify

        return "__".join(slugify(part) for part in (self.kind, self.category, self.capability) if part)


@contextlib.contextmanager
def without_zero3_init():
    """Build models as plain modules even while a ZeRO-3 ``TrainingArguments`` is alive.

    Under a live ZeRO-3 config transformers partitions parameters while loading (``zero.Init``), which the DMoERM
    surgery (adapters, heads, loading finished stages) cannot work on. A plain model is partitioned by the DeepSpeed
    engine when the stage's Trainer starts instead.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
