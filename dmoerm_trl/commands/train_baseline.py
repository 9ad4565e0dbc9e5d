"""``dmoerm train-baseline``: the single reward model DMoERM is compared with, from the same config.

    dmoerm train-baseline --config recipes/configs/tiny_cpu.yaml

Trains TRL's ``RewardTrainer`` on ``AutoModelForSequenceClassification`` with the same backbone, the same human pairs
(phase-1 + phase-3 splits) and the same validation split as ``dmoerm train`` with this config, into
``<output_dir>/baseline`` (resumable). ``dmoerm train`` does the same with ``train_baseline: true``.
"""

from __future__ import annotations

import argparse

from .train import DESCRIPTION, run_pipeline


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=help_text, description="Baseline for " + DESCRIPTION, prefix_chars="+", add_help=False
    )
    parser.add_argument("trl_args", nargs=argparse.REMAINDER, help="--config FILE and/or --flag value pairs")
    return parser


def run(args: argparse.Namespace) -> int:
    return main(args.trl_args)


def _baseline_only(training_args) -> None:
    training_args.stages = "baseline"
    training_args.train_baseline = True


def main(argv: list[str] | None = None) -> int:
    return run_pipeline(argv, "dmoerm train-baseline", configure=_baseline_only)
