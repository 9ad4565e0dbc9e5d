"""Reading records from ``.jsonl``/``.json``/``.parquet`` files, folders of them, or a ``datasets.Dataset``: every
record with its source and location, or the :class:`DataValidationError` that names an undecodable one."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import DataValidationError

DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def _iter_source_files(source: str | os.PathLike) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in DATA_FILE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no {'/'.join(DATA_FILE_SUFFIXES)} files in this directory.")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file. Pass a .jsonl, .json or .parquet file, or a directory.")
    if path.suffix not in DATA_FILE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type '{path.suffix}'. Use .jsonl, .json or .parquet.")
    return [path]


def _decode(raw: bytes) -> str:
    """UTF-8 text (a leading BOM dropped); bytes that are not UTF-8 become lone surrogates (``surrogateescape``), so
    the record holding them is reported, or skipped, by :func:`_invalid_text_field` instead of failing the file."""
    return raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def _invalid_text_field(value: Any, name: str = "") -> tuple[str, str] | None:
    """``(field, problem)`` of the first string in ``value`` that is not valid Unicode text, else ``None``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # fails exactly on surrogates, at C speed
            return None
        except UnicodeEncodeError as err:
            char = value[err.start]
            undecodable = "\udc80" <= char <= "\udcff"  # a byte that surrogateescape kept
            what = f"byte 0x{ord(char) - 0xDC00:02x}" if undecodable else f"lone surrogate \\u{ord(char):04x}"
            return name or "<record>", f"not UTF-8 text ({what} at character {err.start + 1})"
    if isinstance(value, Mapping):
        items = ((f"{name}.{key}" if name else str(key), item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{name}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for item_name, item in items:
        found = _invalid_text_field(item, item_name)
        if found:
            return found
    return None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = _decode(raw)
            if not line.strip():
                continue
            location = f"line {line_number}"
            try:
                yield location, json.loads(line)
            except json.JSONDecodeError as err:
                yield (
                    location,
                    DataValidationError(
                        str(path),
                        location,
                        None,
                        f"not valid JSON ({err.msg} at column {err.colno})",
                        "write one JSON object per line (JSON Lines)",
                    ),
                )


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    text = _decode(path.read_bytes())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # a JSON Lines file named .json (common on the hub)
            yield from _iter_jsonl(path)
            return
        raise DataValidationError(
            str(path), f"line {err.lineno}", None, f"not valid JSON ({err.msg})", "fix the JSON syntax"
        ) from None
    if isinstance(data, Mapping):  # {"data": [...]} / {"train": [...]}: one list-valued key
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataValidationError(
                str(path),
                "top level",
                None,
                "a JSON object without exactly one list of records",
                "store a JSON list of records, or JSON Lines",
            )
        data = lists[0]
    if not isinstance(data, list):
        raise DataValidationError(
            str(path), "top level", None, "not a list of records", "store a JSON list of records"
        )
    for index, record in enumerate(data):
        yield f"record {index}", record


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for index, record in enumerate(pq.read_table(path).to_pylist()):
        yield f"record {index}", record


def _iter_records(source) -> Iterator[tuple[str, str, Any]]:
    """Yields (source name, location, record or DataValidationError)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(source, datasets.DatasetDict):
        raise TypeError(f"Got a DatasetDict with splits {list(source)}: pass one split, e.g. dataset['train'].")
    if datasets is not None and isinstance(source, datasets.Dataset):
        name = f"Dataset({source.info.dataset_name or 'in memory'})"
        for index, record in enumerate(source):
            yield name, f"record {index}", record
        return
    if isinstance(source, (str, os.PathLike)):
        sources = [source]
    elif isinstance(source, Sequence):
        sources = list(source)
    else:
        raise TypeError(f"Unsupported source {type(source).__name__}: pass a path, a list of paths or a Dataset.")
    readers = {".jsonl": _iter_jsonl, ".json": _iter_json, ".parquet": _iter_parquet}
    for one_source in sources:
        for path in _iter_source_files(one_source):
            for location, record in readers[path.suffix](path):
                yield str(path), location, record
