"""``dmoerm score``: rewards, routed category and per-capability rewards for conversations in a file."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--model", required=True, help="a saved DMoERM (folder or hub id)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path (default: the model's base model)")
    parser.add_argument(
        "--input", required=True,
        help="jsonl file; each line has `messages` (a chat conversation) or `text`",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    return parser


def read_conversations(path: str) -> list:
    conversations = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
            if "messages" in record:
                conversations.append(record["messages"])
            elif "text" in record:
                conversations.append(record["text"])
            else:
                raise ValueError(f"{path}, line {number}: needs a `messages` list or a `text` string")
    return conversations


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..modeling_dmoerm import DMoERMForSequenceClassification

    conversations = read_conversations(args.input)
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
