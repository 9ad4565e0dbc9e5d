"""``dmoerm eval``: pairwise accuracy against human preferences (overall, per category, per routed category, per
subset and RewardBench section), router and expert accuracy, side by side with a baseline reward model; every
accuracy with a 95% Wilson interval. Writes eval_results.json/.md/.png and eval_examples.jsonl (one row per pair).

    dmoerm eval --model runs/dmoerm --data tests/fixtures/mtmc_tiny.jsonl \
        --labels tests/fixtures/capability_labels_tiny.jsonl --baseline runs/dmoerm/baseline --output runs/eval
    dmoerm eval --model runs/dmoerm --data tests/fixtures/rewardbench_tiny.jsonl   # RewardBench's schema
"""

from __future__ import annotations

import argparse
import os
import sys

from ._errors import positive_int, require_model, require_output_dir


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A saved DMoERM folder (or any sequence-classification RM).")
    parser.add_argument(
        "--data",
        required=True,
        help="Preference pairs: mtmc-rlhf ranked, TRL or RewardBench "
        "(prompt, chosen, rejected, subset, id) file; category, subset and id are optional.",
    )
    parser.add_argument("--labels", default=None, help="Capability labels (capability_pairs.jsonl): expert accuracy.")
    parser.add_argument("--baseline", default=None, help="A baseline reward model folder to compare with.")
    parser.add_argument("--output", default=None, help="Output folder (default: <model>/eval).")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="Sequences per forward pass.")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="Keep the last N tokens of longer conversations (counted).",
    )
    parser.add_argument(
        "--higher-rank-is-better",
        action="store_true",
        help="Ranks are scores (higher wins) instead of positions (rank 1 wins).",
    )
    parser.add_argument("--skip-invalid", action="store_true", help="Skip malformed records (counted).")
    parser.add_argument(
        "--text-pairs",
        choices=["chat", "text"],
        default="chat",
        help="Text (non-conversational) pairs: 'chat' (default, RewardBench's convention) renders the prompt as a user "
        "turn and each answer as the assistant's with the chat template; 'text' tokenizes them as text with no "
        "template, as TRL's RewardTrainer does (for a model trained on text pairs).",
    )
    parser.add_argument(
        "--split",
        choices=["validation", "task", "aggregator"],
        default=None,
        help="Only the pairs a `dmoerm train` run put in this split (e.g. held-out validation).",
    )
    parser.add_argument("--splits-file", default=None, help="The run's splits.json (default: <model>/splits.json).")
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (tiny models: 1 is fastest)."
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from ..data import DataValidationError
    from ..evaluation import evaluate_reward_models, report_markdown, write_report

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    output = args.output or f"{args.model.rstrip('/')}/eval"
    require_output_dir(output, "--output")  # before the scoring, not after it
    try:  # the other paths too: a missing --labels or --baseline was found only after the model had scored the data
        require_model(args.model, "--model")
        if args.baseline is not None:
            require_model(args.baseline, "--baseline")
        if args.labels is not None and not os.path.exists(args.labels):
            raise FileNotFoundError(
                f"--labels {args.labels} does not exist; pass the capability_pairs.jsonl of `dmoerm label`"
            )
    except FileNotFoundError as err:
        print(f"dmoerm eval: error: {err}", file=sys.stderr)
        return 2
    try:
        report = evaluate_reward_models(
            args.model,
            args.data,
            labels_path=args.labels,
            baseline_path=args.baseline,
            batch_size=args.batch_size,
            max_length=args.max_length,
            lower_rank_is_better=not args.higher_rank_is_better,
            skip_invalid=args.skip_invalid,
            split=args.split,
            splits_file=args.splits_file,
            text_pairs=args.text_pairs,
        )
    except (DataValidationError, FileNotFoundError, ValueError) as err:
        print(f"dmoerm eval: error: {err}", file=sys.stderr)
        return 2
    paths = write_report(report, output)
    print(report_markdown(report))
    print("Wrote " + ", ".join(paths.values()))
    return 0
