"""A stage of the DMoERM pipeline (one Trainer run), building models outside DeepSpeed's ``zero.Init``, and the
barrier where the pipeline's processes wait for each other."""

from __future__ import annotations

from dataclasses import dataclass

from .._compat import without_zero3_init  # noqa: F401 (the pipeline imports it from here)


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


def wait_for_everyone() -> None:
    """Every process of the run waits here (a no-op in one process)."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()
