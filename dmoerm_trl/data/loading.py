"""``load_preference_pairs`` / ``load_capability_labels``: any supported source into one pairs dataset, with a
:class:`LoadReport` of what was kept, skipped and why."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from .categories import CategorySpec, load_category_spec
from .errors import DataValidationError, LoadReport
from .formats import _content_hash, _detect_format, _mtmc_pairs, _RecordChecker, _trl_pair, pair_features
from .readers import _invalid_text_field, _iter_records
from .sources import parse_category_map

logger = logging.getLogger("dmoerm_trl.data")


def load_preference_pairs(
    source,
    *,
    format: str = "auto",
    categories: str | os.PathLike | Mapping | CategorySpec | None = None,
    lower_rank_is_better: bool = True,
    skip_invalid: bool = False,
    report: LoadReport | None = None,
    keep_columns: Sequence[str] = (),
    category_column: str | None = None,
    category_map: Mapping | str | None = None,
    text_pairs: str = "text",
):
    """Read preference data into a ``datasets.Dataset`` of pairs (see the module docstring for the columns).

    Args:
        source: a ``.jsonl``/``.json``/``.parquet`` path, a directory of them, a list of paths, or a
            ``datasets.Dataset``.
        format: ``"auto"`` (per record: ``src``+``response`` -> mtmc-rlhf ranked, ``chosen``+``rejected`` -> TRL),
            ``"mtmc"`` or ``"trl"``.
        categories: a category set (``"paper"``, a YAML path, a ``{category: [capabilities]}`` mapping or a
            :class:`CategorySpec`). Given, every record's category must be in it (by key or alias) and is mapped to
            its key. ``None``: the paper's Chinese names are mapped to keys, other names are kept as they are.
        lower_rank_is_better: in ranked records, rank 1 beats rank 2 (the mtmc-rlhf convention). ``False`` for
            scores where higher is better. Equal ranks produce no pair.
        skip_invalid: skip malformed records (counted in ``report`` and logged) instead of raising.
        report: a :class:`LoadReport` to fill with counts.
        keep_columns: record fields to carry into string columns of the same name (e.g. RewardBench's ``id`` and
            ``subset`` for ``dmoerm eval``), each value as JSON text so its type survives (``7`` -> ``'7'``,
            ``"7"`` -> ``'"7"'``); a missing field gives ``""``. A ranked record's pairs share the record's value.
        category_column: take each record's category from this column instead of ``category`` (TRL records) or
            ``label`` (ranked records), e.g. ``"source"``. A record without the column is malformed.
        category_map: map the values of the category column to categories (keys or aliases of the category set):
            a mapping, a YAML/JSON file of one, or ``"value=category,value=category"``. Values not in the map give
            uncategorised pairs (counted in ``report.unmapped_category_values`` and logged), which the training
            pipeline routes with the trained router (``route_unlabeled``).
        text_pairs: what text (non-conversational) TRL pairs become. ``"text"`` (default): they stay text, as TRL's
            RewardTrainer reads them (tokenized as ``prompt + answer + EOS``, no chat template; an implicit prompt is
            split off like ``trl.extract_prompt``). ``"chat"``: the prompt becomes one user turn and each answer one
            assistant turn (RewardBench's convention; ``dmoerm eval``'s default, for a model trained on
            conversations).

    Raises:
        DataValidationError: a malformed record (file, record and field named), unless ``skip_invalid``.

    Example:
        >>> import datasets
        >>> from dmoerm_trl.data import load_preference_pairs, LoadReport
        >>> rows = datasets.Dataset.from_list([
        ...     {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "category": "闲聊"},
        ...     {"prompt": "Hi", "chosen": "Hey.", "rejected": "Hm.", "category": "poetry"}])
        >>> report = LoadReport()
        >>> pairs = load_preference_pairs(rows, categories="paper", skip_invalid=True, report=report)
        >>> len(pairs), pairs[0]["category"], report.skipped_records, dict(report.skipped_by_field)
        (1, 'chitchat', 1, {'category': 1})
    """

    if format not in ("auto", "mtmc", "trl"):
        raise ValueError(f"format={format!r}: use 'auto', 'mtmc' or 'trl'.")
    if text_pairs not in ("text", "chat"):
        raise ValueError(f"text_pairs={text_pairs!r}: use 'text' (TRL's RewardTrainer) or 'chat' (RewardBench).")
    spec = None if categories is None else load_category_spec(categories)
    report = report if report is not None else LoadReport()
    mapping = None if category_map is None else parse_category_map(category_map)
    rows: list[dict] = []
    seen_ids: Counter = Counter()
    with_capability = False
    data_format = None
    for source_name, location, record in _iter_records(source):
        if source_name not in report.sources:
            report.sources.append(source_name)
        report.records += 1
        check = _RecordChecker(source_name, location)
        try:
            if isinstance(record, DataValidationError):
                raise record
            if not isinstance(record, Mapping):
                check.fail(None, f"expected a JSON object, got {type(record).__name__}", "store one object per record")
            invalid_text = _invalid_text_field(record)
            if invalid_text:
                check.fail(
                    *invalid_text,
                    "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or skip such records (--skip-invalid)",
                )
            record_format = format if format != "auto" else _detect_format(record)
            if record_format is not None and (category_column is not None or category_map is not None):
                record = _take_category(check, record, record_format, category_column, mapping, report)
            if record_format is None:
                check.fail(
                    None,
                    f"unknown record format (fields: {sorted(record)})",
                    "use mtmc-rlhf fields (src, tgt, response, rank, label) or TRL fields "
                    "(prompt, chosen, rejected, category)",
                )
            if record_format == "mtmc":
                pairs = _mtmc_pairs(check, record, spec, lower_rank_is_better, report)
            else:
                pairs = [_trl_pair(check, record, spec, text_pairs)]
            for pair in pairs:
                pair_format = "text" if isinstance(pair["prompt"], str) else "conversational"
                data_format = data_format or pair_format
                if pair_format != data_format:
                    check.fail(
                        "prompt",
                        f"a {pair_format} pair among {data_format} pairs (one dataset holds one format, as in TRL)",
                        f"convert it to the {data_format} format, or load the two kinds separately",
                    )
        except DataValidationError as error:
            if not skip_invalid:
                raise
            report.add_skip(error)
            continue
        if not pairs:
            report.records_without_pairs += 1
        for pair in pairs:
            for name in keep_columns:
                value = record.get(name)
                pair[f"_keep_{name}"] = "" if value is None else json.dumps(value, ensure_ascii=False)
            with_capability = with_capability or "capability" in pair
            base_id = _content_hash(pair) + (f":{pair['capability']}" if "capability" in pair else "")
            seen_ids[base_id] += 1
            pair["pair_id"] = base_id if seen_ids[base_id] == 1 else f"{base_id}-{seen_ids[base_id]}"
            rows.append(pair)
    if with_capability:
        for row in rows:
            row.setdefault("capability", "")
    report.pairs = len(rows)
    report.uncategorised_pairs = sum(1 for row in rows if not row["category"])
    if report.unmapped_category_values:
        logger.warning(
            "%d record(s) have a %s value that category_map does not map (their pairs are uncategorised): %s",
            sum(report.unmapped_category_values.values()),
            category_column or "category",
            dict(report.unmapped_category_values.most_common(5)),
        )
    if report.skipped_records:
        logger.warning(
            "Skipped %d invalid record(s) of %d (by field: %s). First: %s",
            report.skipped_records,
            report.records,
            dict(report.skipped_by_field),
            report.skip_examples[0],
        )
    if report.tied_pairs:
        logger.info("%d candidate pair(s) had equal ranks and produced no pair.", report.tied_pairs)
    return _pairs_dataset(rows, with_capability, data_format == "text", keep_columns)


def _pairs_dataset(rows: list[dict], with_capability: bool, text: bool, keep_columns: Sequence[str] = ()):
    from datasets import Dataset

    with_tools = any("tools" in row for row in rows)
    features = pair_features(with_capability, text=text, tools=with_tools)
    columns = {name: [row.get(name) if name == "tools" else row[name] for row in rows] for name in features}
    if any("chat_template_kwargs" in row for row in rows):  # a mapping, typed from the data (as TRL reads it)
        kwargs = [row.get("chat_template_kwargs", {}) for row in rows]
        features["chat_template_kwargs"] = Dataset.from_dict({"kwargs": kwargs}).features["kwargs"]
        columns["chat_template_kwargs"] = kwargs
    for name in keep_columns:
        if name in columns:
            raise ValueError(f"keep_columns: {name!r} is already a column of the pairs ({', '.join(features)})")
        features[name] = features["pair_id"]
        columns[name] = [row[f"_keep_{name}"] for row in rows]
    return Dataset.from_dict(columns, features=features)


def _take_category(check, record: Mapping, record_format: str, column, mapping, report: LoadReport) -> dict:
    """The record with its category field (``label`` for ranked records) taken from ``column`` through ``mapping``."""
    target = "label" if record_format == "mtmc" else "category"
    column = column or target
    if column not in record:
        check.fail(
            column,
            "missing (it is the category_column)",
            f"add '{column}' or set category_column to a column the records have",
        )
    value = record[column]
    if mapping is not None:
        key = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        category = mapping.get(key.strip() if isinstance(key, str) else key)
        if category is None:
            report.unmapped_category_values[key] += 1
            category = ""
        value = category
    return {**record, target: value}


def load_capability_labels(source, *, categories=None, skip_invalid: bool = False, report: LoadReport | None = None):
    """Read a capability label file (the ``capability_pairs.jsonl`` of ``dmoerm label``) as a pairs dataset.

    Same columns as :func:`load_preference_pairs` plus ``capability``; every record must have one.

    Example:
        >>> from dmoerm_trl.data import load_capability_labels
        >>> labels = load_capability_labels("labels/capability_pairs.jsonl")  # doctest: +SKIP
        >>> labels.filter(lambda r: r["capability"] == "logic")  # one expert's training data  # doctest: +SKIP
    """
    pairs = load_preference_pairs(
        source, format="trl", categories=categories, skip_invalid=skip_invalid, report=report
    )
    if not len(pairs):  # an empty label file (no label kept): still the capability schema
        from datasets import Dataset

        features = pair_features(with_capability=True)
        return Dataset.from_dict({name: [] for name in features}, features=features)
    if "capability" not in pairs.column_names:
        raise DataValidationError(
            str(source),
            "all records",
            "capability",
            "missing",
            "pass the output of `dmoerm label` (it has a 'capability' column)",
        )
    missing = [i for i, value in enumerate(pairs["capability"]) if not value]
    if missing:
        raise DataValidationError(
            str(source),
            f"record {missing[0]}",
            "capability",
            "missing or empty",
            "every capability label needs its capability",
        )
    return pairs


def write_jsonl_atomic(rows: Iterable[Mapping], path: str | os.PathLike) -> int:
    """Write rows as JSON Lines atomically (:func:`dmoerm_trl.utils.io.atomic_write_jsonl`). Returns the row count.

    Example:
        >>> import tempfile, os
        >>> write_jsonl_atomic([{"a": 1}], os.path.join(tempfile.mkdtemp(), "x.jsonl"))
        1
    """
    from ..utils.io import atomic_write_jsonl

    return atomic_write_jsonl(path, rows)
