"""``dmoerm score``: rewards, routed category and per-capability rewards for conversations in a file."""

from __future__ import annotations

import argparse
import json
import sys

from ._errors import positive_int, require_input_file, require_model


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--model", required=True, help="a saved DMoERM (folder or hub id)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path (default: the model's base model)")
    parser.add_argument(
        "--input", required=True,
        help="jsonl file; each line has `messages` (a chat conversation) or `text`",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="conversations per forward pass")
    return parser


def read_conversations(path: str) -> list:
    """The ``messages`` or ``text`` of each line of a jsonl file; a bad line raises a ``ValueError`` naming it."""
    from ..scoring import check_conversation

    conversations = []
    with open(require_input_file(path, "--input"), "rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{where}: not UTF-8 (byte {raw[err.start:err.start + 1]!r} at column {err.start + 1}); save the "
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
            conversations.append(check_conversation(conversation, where))
    return conversations


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..modeling_dmoerm import DMoERMForSequenceClassification

    require_model(args.model, "--model")
    if args.tokenizer is not None:
        require_model(args.tokenizer, "--tokenizer")
    conversations = read_conversations(args.input)
    if not conversations:
        raise ValueError(f"--input {args.input} has no conversations (every line is empty)")
    model = DMoERMForSequenceClassification.from_pretrained(args.model)
    tokenizer_source = args.tokenizer or (
        f"{args.model}/base" if model.config.base_model_name_or_path is None else model.config.base_model_name_or_path
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    results = model.compute_rewards(conversations, tokenizer, batch_size=args.batch_size)
    for result in results:
        print(json.dumps(result, ensure_ascii=False))
    truncated = sum(result["truncated"] for result in results)
    if truncated:  # the per-line flag says which; this says how many (docs/rl.md, "Over-long conversations")
        print(
            f"dmoerm score: {truncated} of {len(results)} conversations were longer than "
            f"{model.config.max_position_embeddings} tokens: scored on their end (oldest prompt tokens dropped, "
            "response kept); see `truncated` per line",
            file=sys.stderr,
        )
    return 0
