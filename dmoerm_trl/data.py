"""Preference data for DMoERM: category sets, readers for ranked and pairwise formats, validation.

Every reader returns the same thing, a ``datasets.Dataset`` of preference pairs in TRL's conversational format, so
``trl.RewardTrainer`` reads it as is:

- ``prompt``: the whole multi-turn context, a list of ``{"role", "content"}`` messages ending with a user turn
- ``chosen`` / ``rejected``: ``[{"role": "assistant", "content": ...}]``
- ``category``: the category key (``"objective_qa"``...), ``""`` when the source has none
- ``pair_id``: a stable id (a hash of the pair's content; repeats of identical pairs get ``-2``, ``-3``... suffixes)
- ``capability``: only in capability label files (the output of ``dmoerm label``)

Sources: the mtmc-rlhf ranked format (``src`` user turns, ``tgt`` earlier assistant turns, ``response`` candidates,
``rank`` one int per candidate, ``label`` category name), TRL preference files (``prompt``/``chosen``/``rejected``,
text or messages, or implicit-prompt ``chosen``/``rejected`` conversations) with an optional ``category`` column;
``.jsonl``, ``.json`` or ``.parquet`` files, a directory of them, or a ``datasets.Dataset``.

Bad records raise :class:`DataValidationError` naming the file, the record and the field; with
``skip_invalid=True`` they are skipped, counted in a :class:`LoadReport` and logged. Nothing is dropped silently.

Example:
    >>> import json, tempfile, os
    >>> from dmoerm_trl.data import load_preference_pairs, PAPER_CATEGORIES
    >>> path = os.path.join(tempfile.mkdtemp(), "ranked.jsonl")
    >>> record = {"src": ["Hi!", "What is 2+2?"], "tgt": ["Hello!"], "response": ["4", "5", "22"],
    ...           "rank": [1, 2, 3], "label": "客观知识问答"}
    >>> _ = open(path, "w", encoding="utf-8").write(json.dumps(record, ensure_ascii=False) + "\\n")
    >>> pairs = load_preference_pairs(path)
    >>> len(pairs), pairs[0]["category"], pairs[0]["chosen"][0]["content"], pairs[0]["rejected"][0]["content"]
    (3, 'objective_qa', '4', '5')
    >>> [m["role"] for m in pairs[0]["prompt"]]
    ['user', 'assistant', 'user']
    >>> PAPER_CATEGORIES["chitchat"][:2]
    ['conversational_sense', 'proactivity']
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .category_sets import (
    PAPER_CAPABILITY_NAMES_ZH,
    PAPER_CATEGORIES,
    PAPER_CATEGORY_NAMES_ZH,
    CategorySpec,
    load_category_set,
    load_category_spec,
)
from .dataset_sources import load_dataset_split, parse_category_map

logger = logging.getLogger(__name__)

__all__ = [
    "PAPER_CAPABILITY_NAMES_ZH",
    "PAPER_CATEGORIES",
    "PAPER_CATEGORY_NAMES_ZH",
    "CategorySpec",
    "DataValidationError",
    "LoadReport",
    "load_capability_labels",
    "load_category_set",
    "load_category_spec",
    "load_dataset_split",
    "load_preference_pairs",
    "pair_features",
    "parse_category_map",
    "write_jsonl_atomic",
]

DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
MESSAGE_ROLES = ("system", "user", "assistant", "tool")


class DataValidationError(ValueError):
    """A malformed record: names the source file, the record, the field, what is wrong and how to fix it."""

    def __init__(self, source: str, location: str, field: str | None, problem: str, fix: str):
        self.source, self.location, self.field, self.problem, self.fix = source, location, field, problem, fix
        where = f"{source}, {location}" + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}. Fix: {fix}")


@dataclass
class LoadReport:
    """What a load did: counts of records, pairs, ties and skips (with reasons), for logs and summaries."""

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


def pair_features(with_capability: bool = False, text: bool = False, tools: bool = False):
    """The ``datasets.Features`` of a pairs dataset (TRL's conversational format, or its standard text format with
    ``text=True``, + ``category`` + ``pair_id``; ``tools`` adds TRL's ``tools`` column as JSON text)."""
    from datasets import Features, List, Value

    message = Value("string") if text else List({"role": Value("string"), "content": Value("string")})
    columns = {
        "prompt": message,
        "chosen": message,
        "rejected": message,
        "category": Value("string"),
        "pair_id": Value("string"),
    }
    if with_capability:
        columns["capability"] = Value("string")
    if tools:
        columns["tools"] = Value("string")
    return Features(columns)


def is_text_pairs(dataset) -> bool:
    """Whether a pairs dataset is in TRL's standard (text) format rather than the conversational one.

    Example:
        >>> import datasets
        >>> is_text_pairs(datasets.Dataset.from_dict({"prompt": ["Hi"], "chosen": [" Hello"], "rejected": [" No"]}))
        True
    """
    from datasets import Value

    feature = dataset.features.get("prompt", dataset.features.get("chosen"))
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


# ----------------------------------------------------------------------------------------------------------------
# Reading records from files
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Record -> pairs
# ----------------------------------------------------------------------------------------------------------------


def _detect_format(record: Mapping) -> str | None:
    if "src" in record and "response" in record:
        return "mtmc"
    if "chosen" in record and "rejected" in record:
        return "trl"
    return None


class _RecordChecker:
    """Field checks that raise DataValidationError with the record's location."""

    def __init__(self, source: str, location: str):
        self.source, self.location = source, location

    def fail(self, field: str | None, problem: str, fix: str):
        raise DataValidationError(self.source, self.location, field, problem, fix)

    def string_list(self, record: Mapping, name: str, min_length: int = 0) -> list[str]:
        value = record.get(name)
        if value is None:
            self.fail(name, "missing", f"add '{name}' (a list of strings)")
        if isinstance(value, str) or not isinstance(value, Sequence):
            self.fail(name, f"expected a list of strings, got {type(value).__name__}", f"make '{name}' a JSON list")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{name}[{index}]", f"expected a string, got {type(item).__name__}", "use text strings")
        if len(value) < min_length:
            self.fail(name, f"has {len(value)} items, needs at least {min_length}", f"add items to '{name}'")
        return list(value)

    def messages(self, value: Any, name: str) -> list[dict[str, str]]:
        if isinstance(value, str) or not isinstance(value, Sequence):
            self.fail(name, f"expected a list of messages, got {type(value).__name__}", "use [{role, content}, ...]")
        messages = []
        for index, message in enumerate(value):
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                self.fail(
                    f"{name}[{index}]", "not a {'role', 'content'} message", "give each message role and content"
                )
            role, content = message["role"], message["content"]
            if role not in MESSAGE_ROLES:
                self.fail(f"{name}[{index}].role", f"unknown role {role!r}", f"use one of {', '.join(MESSAGE_ROLES)}")
            if not isinstance(content, str):
                self.fail(
                    f"{name}[{index}].content",
                    f"expected a string, got {type(content).__name__}",
                    "flatten multi-part content into one string",
                )
            messages.append({"role": role, "content": content})
        return messages


def _resolve_category(check: _RecordChecker, value: Any, name: str, spec: CategorySpec | None, strict: bool) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        check.fail(name, f"expected a string, got {type(value).__name__}", "use the category name as a string")
    value = value.strip()
    if spec is None:  # no category set given: map the paper's Chinese names, keep anything else as is
        return _PAPER_SPEC.resolve(value) or value
    key = spec.resolve(value)
    if key is None and strict:
        check.fail(
            name,
            f"unknown category {value!r} (known: {', '.join(spec.categories)})",
            "add it (or an alias) to your category set YAML, or pass --skip-invalid to skip such records",
        )
    return key or ""


def _mtmc_pairs(check: _RecordChecker, record: Mapping, spec, lower_rank_is_better: bool, report: LoadReport):
    src = check.string_list(record, "src", min_length=1)
    if record.get("tgt") is None and len(src) == 1:
        tgt = []
    else:
        tgt = check.string_list(record, "tgt")
    if len(tgt) != len(src) - 1:
        check.fail(
            "tgt",
            f"has {len(tgt)} assistant turns for {len(src)} user turns (needs len(src) - 1 = {len(src) - 1})",
            "give one earlier assistant turn between each pair of user turns",
        )
    responses = check.string_list(record, "response", min_length=1)
    ranks = record.get("rank")
    if isinstance(ranks, str) or not isinstance(ranks, Sequence):
        check.fail("rank", f"expected a list of ints, got {type(ranks).__name__}", "give one int rank per response")
    ranks = list(ranks)
    if len(ranks) != len(responses):
        check.fail("rank", f"has {len(ranks)} ranks for {len(responses)} responses", "give one rank per response")
    for index, rank in enumerate(ranks):
        is_number = isinstance(rank, (int, float)) and not isinstance(rank, bool)
        if not is_number or not math.isfinite(rank) or rank != int(rank):
            check.fail(f"rank[{index}]", f"expected an integer, got {rank!r}", "use integer ranks (NaN is no rank)")
    category = _resolve_category(check, record.get("label"), "label", spec, strict=spec is not None)

    prompt = []
    for turn, user_text in enumerate(src):
        prompt.append({"role": "user", "content": user_text})
        if turn < len(tgt):
            prompt.append({"role": "assistant", "content": tgt[turn]})
    pairs = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if ranks[i] == ranks[j]:
                report.tied_pairs += 1
                continue
            i_better = (ranks[i] < ranks[j]) == lower_rank_is_better
            better, worse = (i, j) if i_better else (j, i)
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": responses[better]}],
                    "rejected": [{"role": "assistant", "content": responses[worse]}],
                    "category": category,
                }
            )
    return pairs


def extract_text_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """``(prompt, chosen, rejected)`` of an implicit-prompt text pair, split as TRL's ``extract_prompt`` does: the
    prompt is the longest common character prefix, less a trailing space (which starts the answers).

    Example:
        >>> extract_text_prompt("Human: Hi. Assistant: Hello!", "Human: Hi. Assistant: Go away.")
        ('Human: Hi. Assistant:', ' Hello!', ' Go away.')
    """
    shared = 0
    for shared in range(min(len(chosen), len(rejected))):
        if chosen[shared] != rejected[shared]:
            if shared and chosen[shared - 1] == " ":  # the space before the answers belongs to them
                shared -= 1
            break
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _template_columns(check: _RecordChecker, record: Mapping, conversational: bool) -> dict[str, Any]:
    """The ``tools`` (kept as JSON text, which TRL reads) and ``chat_template_kwargs`` (a mapping) of a record; both
    only mean something for conversational pairs (the chat template), so a text pair with them is malformed."""
    columns: dict[str, Any] = {}
    tools, kwargs = record.get("tools"), record.get("chat_template_kwargs")
    if tools is not None and tools != "" and tools != []:
        if isinstance(tools, str):
            try:
                tools = json.loads(tools)
            except json.JSONDecodeError as error:
                check.fail("tools", f"not valid JSON ({error.msg})", "give a list of tool (function) schemas")
        if not isinstance(tools, list) or not all(isinstance(tool, Mapping) for tool in tools):
            check.fail("tools", f"expected a list of tool schemas, got {type(tools).__name__}", "give a JSON list")
        columns["tools"] = json.dumps(tools, ensure_ascii=False)
    if kwargs is not None and kwargs != {}:
        if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
            check.fail(
                "chat_template_kwargs", f"expected a mapping, got {type(kwargs).__name__}",
                'give keyword arguments of apply_chat_template, e.g. {"enable_thinking": false}',
            )
        columns["chat_template_kwargs"] = dict(kwargs)
    if columns and not conversational:
        check.fail(
            next(iter(columns)), "only applies to conversational pairs (the chat template), but this pair is text "
            "(TRL ignores it for text)", "store prompt/chosen/rejected as message lists, or drop the field",
        )
    return columns


def _trl_pair(check: _RecordChecker, record: Mapping, spec, text_pairs: str = "text"):
    chosen, rejected = record.get("chosen"), record.get("rejected")
    prompt = record.get("prompt")
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            check.fail(name, "missing", f"add '{name}'")
    text = isinstance(chosen, str) or isinstance(rejected, str)
    if text:  # TRL's standard (text) format: kept as text, tokenized without a chat template
        for name, value in (("chosen", chosen), ("rejected", rejected), ("prompt", prompt)):
            if value is not None and not isinstance(value, str):
                check.fail(
                    name, f"'{name}' is {type(value).__name__} but the pair is text",
                    "use text for prompt, chosen and rejected, or messages for all three",
                )
        if prompt is None:  # implicit prompt: the shared text prefix of chosen and rejected (TRL's extract_prompt)
            prompt, chosen, rejected = extract_text_prompt(chosen, rejected)
            if not prompt:
                check.fail(
                    "prompt", "missing, and 'chosen'/'rejected' share no text prefix to take as the prompt",
                    "add a 'prompt' column, or include the prompt at the start of both chosen and rejected",
                )
        if not prompt:
            check.fail("prompt", "empty: no text before the answers", "give the prompt text")
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not value:
                check.fail(name, "empty answer", f"give '{name}' a non-empty answer")
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if text_pairs == "chat":  # RewardBench's convention: the prompt as a user turn, each answer as the reply
            pair = {"prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}]}
            text = False
    else:
        pair = _message_prompt(check, prompt, chosen, rejected)
    pair.update(_template_columns(check, record, conversational=not text))
    pair["category"] = _resolve_category(check, record.get("category"), "category", spec, strict=spec is not None)
    return _with_capability(check, record, spec, pair)


def _message_prompt(check: _RecordChecker, prompt, chosen, rejected) -> dict[str, list]:
    if prompt is None:  # implicit prompt: the shared conversation prefix of chosen and rejected
        chosen_messages, rejected_messages = check.messages(chosen, "chosen"), check.messages(rejected, "rejected")
        shared = 0
        while (
            shared < min(len(chosen_messages), len(rejected_messages)) - 1
            and chosen_messages[shared] == rejected_messages[shared]
        ):
            shared += 1
        prompt_messages = chosen_messages[:shared]
        chosen_messages, rejected_messages = chosen_messages[shared:], rejected_messages[shared:]
    elif isinstance(prompt, str):
        check.fail(
            "prompt", "the prompt is text but 'chosen'/'rejected' are messages",
            "use text for prompt, chosen and rejected, or messages for all three",
        )
    else:
        prompt_messages = check.messages(prompt, "prompt")
        chosen_messages, rejected_messages = check.messages(chosen, "chosen"), check.messages(rejected, "rejected")
    if not prompt_messages:
        check.fail("prompt", "empty: no conversation before the answers", "give at least one user message")
    for name, messages in (("chosen", chosen_messages), ("rejected", rejected_messages)):
        if not messages or messages[-1]["role"] != "assistant":
            check.fail(name, "does not end with an assistant message", f"make '{name}' the assistant's answer")
    return {"prompt": prompt_messages, "chosen": chosen_messages, "rejected": rejected_messages}


def _with_capability(check: _RecordChecker, record: Mapping, spec, pair: dict) -> dict:
    if "capability" in record:
        capability = record["capability"]
        if not isinstance(capability, str) or not capability:
            check.fail("capability", f"expected a non-empty string, got {capability!r}", "name the capability")
        if spec is not None and pair["category"] and capability not in spec.categories.get(pair["category"], []):
            check.fail(
                "capability",
                f"{capability!r} is not a capability of category {pair['category']!r}",
                f"use one of {spec.categories.get(pair['category'])} or fix the category set",
            )
        pair["capability"] = capability
    return pair


def conversation_key(prompt_messages: list[dict[str, str]]) -> str:
    """A stable id of a conversation (its prompt messages): pairs of one ranked list share it."""
    payload = json.dumps(list(prompt_messages), ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def _content_hash(pair: Mapping) -> str:
    payload = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


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
                check.fail(*invalid_text, "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or skip such "
                           "records (--skip-invalid)")
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
                        "prompt", f"a {pair_format} pair among {data_format} pairs (one dataset holds one format, "
                        "as in TRL)", f"convert it to the {data_format} format, or load the two kinds separately",
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
        check.fail(column, "missing (it is the category_column)", f"add '{column}' or set category_column to a column "
                   "the records have")
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
    from .utils.io import atomic_write_jsonl

    return atomic_write_jsonl(path, rows)


_PAPER_SPEC = load_category_spec("paper")
