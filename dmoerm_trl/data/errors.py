"""What a data load or preparation reports: the errors users catch and the counts saved in summaries."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("dmoerm_trl.data")


class DataError(ValueError):
    """Base of the data errors: the data cannot be used as it is; the message says what is wrong and how to fix it.
    Catch this (or ``ValueError``) for both :class:`DataValidationError` (one malformed record, named) and
    :class:`TrainingDataError` (the data as a whole cannot train a phase).

    Two kinds remain because they are handled differently: a record's error carries its source, location and field,
    so ``skip_invalid`` can skip that record and count it in a :class:`LoadReport`; a :class:`TrainingDataError` is
    about the data or the settings as a whole (no pairs, a category without data, changed splits), which no skip
    can mend, so it always stops the run."""


class DataValidationError(DataError):
    """A malformed record: names the source file, the record, the field, what is wrong and how to fix it."""

    def __init__(self, source: str, location: str, field: str | None, problem: str, fix: str):
        self.source, self.location, self.field, self.problem, self.fix = source, location, field, problem, fix
        where = f"{source}, {location}" + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}. Fix: {fix}")


@dataclass
class LoadReport:
    """What a load did: counts of records, pairs, ties and skips (with reasons), for logs and summaries.

    One load's fixed fields, read by name (``report.tied_pairs``); a training run keeps a :class:`DataReport`
    instead, because it gathers several loads and steps under prefixed names plus warnings, and folds each load's
    :class:`LoadReport` into it (:meth:`DataReport.add_load`).
    """

    records: int = 0
    pairs: int = 0
    skipped_records: int = 0
    skipped_by_field: Counter = field(default_factory=Counter)
    skip_examples: list[str] = field(default_factory=list)  # the first few skip messages, verbatim
    tied_pairs: int = 0  # candidate pairs with equal ranks: no pair (by design, not an error)
    records_without_pairs: int = 0  # valid records with < 2 responses or only ties
    sources: list[str] = field(default_factory=list)
    uncategorised_pairs: int = 0  # pairs without a category (no column, an empty value, or unmapped by category_map)
    unmapped_category_values: Counter = field(default_factory=Counter)  # category_column values not in category_map

    def add_skip(self, error: DataValidationError) -> None:
        self.skipped_records += 1
        self.skipped_by_field[error.field or "<record>"] += 1
        if len(self.skip_examples) < 10:
            self.skip_examples.append(str(error))

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "pairs": self.pairs,
            "skipped_records": self.skipped_records,
            "skipped_by_field": dict(self.skipped_by_field),
            "skip_examples": list(self.skip_examples),
            "tied_pairs": self.tied_pairs,
            "records_without_pairs": self.records_without_pairs,
            "sources": list(self.sources),
            "uncategorised_pairs": self.uncategorised_pairs,
            "unmapped_category_values": dict(self.unmapped_category_values),
        }


class TrainingDataError(DataError):
    """Training cannot go on with this data; the message says what is wrong and how to fix it."""


@dataclass
class DataReport:
    """Counts of what the preparation kept, dropped and why; saved in the run's ``training_summary.json``.

    A run's open-ended account (counts named by the step that made them, e.g. ``categories_skipped_no_data``,
    and warnings); it stays apart from :class:`LoadReport`, whose fixed fields describe one load, and takes in a
    load's counts with :meth:`add_load`.

    Example:
        >>> from dmoerm_trl.data import DataReport, LoadReport
        >>> report = DataReport()
        >>> report.add_load("human", LoadReport(records=3, pairs=5, tied_pairs=1))
        >>> report.counts["human_pairs"], report.counts["human_tied_pairs"]
        (5, 1)
    """

    counts: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    @staticmethod
    def key(what: str, name: str) -> str:
        """A count's name: ``what`` in snake case, then ``name``, a word shared at the seam said once.

        Example:
            >>> DataReport.key("human pairs", "pairs_longer_than_max_length"), DataReport.key("human", "pairs_x")
            ('human_pairs_longer_than_max_length', 'human_pairs_x')
        """
        slug = "_".join(what.split())
        first = name.split("_", 1)[0]
        if (slug == first or slug.endswith("_" + first)) and "_" in name:
            name = name.split("_", 1)[1]
        return f"{slug}_{name}"

    def add_load(self, prefix: str, load: LoadReport) -> None:
        """Add ``load``'s counts (its integer fields) as ``<prefix>_<field>``."""
        self.counts.update({f"{prefix}_{k}": v for k, v in load.to_dict().items() if isinstance(v, int)})

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning(message)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "warnings": list(self.warnings)}
