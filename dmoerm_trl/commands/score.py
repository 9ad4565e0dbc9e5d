"""``dmoerm score``: rewards, routed category and per-capability rewards for conversations in a file."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..paths import unloadable_model
from ._errors import positive_int, require_input_file, require_model, require_output_dir


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--model", required=True, help="a saved DMoERM (folder or hub id)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path (default: the model's base model)")
    parser.add_argument(
        "--input",
        required=True,
        help="jsonl file; each line has `messages` (a chat conversation) or `text` (already chat-templated: the "
        "router reads the prompt, up to the template's assistant opener), and optionally `category` (bypasses the "
        "router)",
    )
    parser.add_argument("--batch_size", type=positive_int, default=8, help="conversations per forward pass")
    parser.add_argument(
        "--output",
        default=None,
        help="also write the rows to this jsonl file (written atomically; stdout still gets them)",
    )
    return parser


def read_conversations(path: str) -> list:
    """The ``messages`` or ``text`` of each line of a jsonl file; a bad line raises a ``ValueError`` naming it."""
    return [conversation for _, conversation, _, _ in read_records(path)]


def read_records(path: str) -> list[tuple[int, object, str | None, object]]:
    """``(line number, conversation, category or None, id or None)`` per non-empty line of a jsonl file: each line's
    ``messages``/``text``, its optional ``category`` and ``id``; a bad line raises a ``ValueError`` naming it.

    Example:
        >>> import json, tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        ...     _ = f.write(json.dumps({"id": "a1", "text": "hi"}) + "\\n")
        >>> read_records(f.name)
        [(1, 'hi', None, 'a1')]
    """
    from ..scoring import check_conversation

    records = []
    with open(require_input_file(path, "--input"), "rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
                if number == 1:
                    line = line.removeprefix("\ufeff")  # a UTF-8 BOM (Windows editors write one)
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{where}: not UTF-8 (byte {raw[err.start : err.start + 1]!r} at column {err.start + 1}); save the "
                    "file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict) or ("messages" not in record and "text" not in record):
                raise ValueError(f"{where}: needs a `messages` list or a `text` string")
            conversation = record["messages"] if "messages" in record else record["text"]
            category = record.get("category")
            if category is not None and not isinstance(category, str):
                raise ValueError(f"{where}: `category` must be a category name (a string), got {category!r:.40}")
            records.append((number, check_conversation(conversation, where), category, record.get("id")))
    return records


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..evaluation import reward_tokenizer_source
    from ..models.dmoerm.modeling_dmoerm import DMoERMForSequenceClassification

    require_model(args.model, "--model")
    if args.tokenizer is not None:
        require_model(args.tokenizer, "--tokenizer")

    if args.output is not None:  # checked before the model loads: a bad path fails in a second, not after scoring
        if Path(args.output).is_dir():
            raise ValueError(
                f"--output {args.output} is a folder; pass a file path such as {args.output}/scores.jsonl"
            )
        require_output_dir(str(Path(args.output).parent), "--output")
    records = read_records(args.input)
    if not records:
        raise ValueError(f"--input {args.input} has no conversations (every line is empty)")
    _warn_repeated_ids(records, args.input)
    try:
        model = DMoERMForSequenceClassification.from_pretrained(args.model)
    except OSError as error:  # a hub id that does not exist, or is not cached while offline
        raise unloadable_model("--model", args.model, error) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or reward_tokenizer_source(args.model, model))
    except OSError as error:
        raise unloadable_model(
            "--tokenizer" if args.tokenizer else "--model", args.tokenizer or args.model, error
        ) from None
    if tokenizer.chat_template is None:
        chat = next((number for number, conversation, _, _ in records if isinstance(conversation, list)), None)
        if chat is not None:
            source = args.tokenizer or "the model folder's"
            raise ValueError(
                f"{args.input}, line {chat}: `messages` need a chat template, but the tokenizer "
                f"({source}) has none; pass --tokenizer with a chat "
                "template (by default the model folder's), or give `text` already rendered with the template"
            )
    by_category: dict[str, list[int]] = {}  # records that name their category (the router is bypassed), by category
    for i, (number, _, category, _) in enumerate(records):
        if category is None:
            continue
        if category not in model.config.categories:
            raise ValueError(
                f"{args.input}, line {number}: unknown category {category!r}; this model's categories are "
                f"{model.config.category_names} (or leave `category` out to route the conversation)"
            )
        by_category.setdefault(category, []).append(i)
    routed = [i for i, record in enumerate(records) if record[2] is None]
    # One summary line about over-long conversations below, instead of compute_rewards' warning per batch.
    truncation_log = logging.getLogger("dmoerm_trl.truncation")
    level = truncation_log.level
    truncation_log.setLevel(logging.ERROR)
    try:
        by_index = _score(model, tokenizer, records, routed, by_category, args)
    finally:
        truncation_log.setLevel(level)
    results = [by_index[i] for i in range(len(records))]
    rows = [({"id": records[i][3]} if records[i][3] is not None else {}) | result for i, result in enumerate(results)]
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    if args.output is not None:
        from ..utils.io import atomic_write_jsonl

        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(args.output, rows)
        print(f"dmoerm score: wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    truncated = sum(result["truncated"] for result in results)
    if truncated:  # the per-line flag says which; this says how many (docs/rl.md, "Over-long conversations")
        print(
            f"dmoerm score: {truncated} of {len(results)} conversations were longer than "
            f"{model.config.max_position_embeddings} tokens: scored on their end (oldest prompt tokens dropped, "
            "response kept); see `truncated` per line",
            file=sys.stderr,
        )
    return 0


def _score(model, tokenizer, records, routed, by_category, args) -> dict[int, dict]:
    """Rewards of every record by its index: routed records in one pass, named categories batched per category."""
    from ..models.dmoerm._prompt_boundary import PromptBoundaryError

    by_index: dict[int, dict] = {}
    try:
        conversations = [records[i][1] for i in routed]
        scored = model.compute_rewards(conversations, tokenizer, batch_size=args.batch_size) if routed else []
    except PromptBoundaryError as error:
        if error.row is None:
            raise
        raise ValueError(
            f"{args.input}, line {records[routed[error.row]][0]}: {error}".replace(f"conversation {error.row}: ", "")
            + " (in the file: a `category` field)"
        ) from None
    by_index.update(zip(routed, scored))
    for category, indices in by_category.items():  # batched per category, results put back in file order
        conversations = [records[i][1] for i in indices]
        scored = model.compute_rewards(conversations, tokenizer, batch_size=args.batch_size, categories=category)
        by_index.update(zip(indices, scored))
    return by_index


def _warn_repeated_ids(records, path: str) -> None:
    """One warning line when lines repeat an ``id`` (passed through as they are: a join on ``id`` would match
    several rows)."""
    seen: dict[str, int] = {}
    repeated = []
    for number, _, _, record_id in records:
        if record_id is None:
            continue
        key = json.dumps(record_id)
        if key in seen:
            repeated.append((number, seen[key], record_id))
        else:
            seen[key] = number
    if repeated:
        number, first, record_id = repeated[0]
        print(
            f"dmoerm score: warning: {len(repeated)} line(s) of {path} repeat the `id` of an earlier line (line "
            f"{number} repeats {record_id!r} of line {first}); ids are passed through as they are, so a join on `id` "
            "matches several rows",
            file=sys.stderr,
        )
