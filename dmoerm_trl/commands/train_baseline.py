"""``dmoerm train-baseline``: the single reward model DMoERM is compared with, from the same config.

    dmoerm train-baseline --config recipes/configs/tiny_cpu.yaml

Trains TRL's ``RewardTrainer`` on ``AutoModelForSequenceClassification`` with the same backbone, the same human pairs
(phase-1 + phase-3 splits) and the same validation split as ``dmoerm train`` with this config, into
``<output_dir>/baseline`` (resumable). ``dmoerm train`` does the same with ``train_baseline: true``.
"""

from __future__ import annotations

import argparse
import sys

from .train import DESCRIPTION, parse_config, print_summary, setup_logging, user_errors


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=help_text, description="Baseline for " + DESCRIPTION, prefix_chars="+", add_help=False
    )
    parser.add_argument("trl_args", nargs=argparse.REMAINDER, help="--config FILE and/or --flag value pairs")
    return parser


def run(args: argparse.Namespace) -> int:
    return main(args.trl_args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        model_args, data_args, training_args = parse_config(argv)
    except user_errors() as err:
        print(f"dmoerm train-baseline: error in the configuration: {err}", file=sys.stderr)
        return 2
    from ..trainers.pipeline import DMoERMTrainingPipeline

    training_args.stages = "baseline"
    training_args.train_baseline = True
    try:
        summary = DMoERMTrainingPipeline(model_args, data_args, training_args).run()
    except user_errors() as err:
        print(f"dmoerm train-baseline: error: {err}", file=sys.stderr)
        return 2
    if training_args.process_index == 0:
        print_summary(summary)
    return 0
