"""``dmoerm train``: the whole DMoERM training pipeline from a TRL-style YAML config (+ CLI overrides).

    dmoerm train --config recipes/configs/tiny_cpu.yaml
    dmoerm train --config recipes/configs/tiny_cpu.yaml --output_dir runs/x --task_learning_rate 1e-3
    dmoerm train --help            # every flag (model, data and training arguments)

Rerunning the same command resumes: finished stages are skipped, an interrupted stage continues from its last
checkpoint. A rerun with settings that would change the result (other than logging, threads, stage selection ...)
is refused with the changed keys; ``--restart true`` deletes the old results and starts over. Under ``accelerate launch`` use ``recipes/train_dmoerm.py`` (the same code).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

DESCRIPTION = (
    "Train a DMoERM: router, then per category phase 1 (task adapter), phase 2 (capability experts) and phase 3 "
    "(aggregator), into one output folder that from_pretrained loads. Options come from --config YAML and/or flags "
    "(run `dmoerm train --help` for all of them)."
)


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    # The subcommand's flags are TrlParser's (hundreds of TrainingArguments); argparse only forwards them.
    parser = subparsers.add_parser(name, help=help_text, description=DESCRIPTION, prefix_chars="+", add_help=False)
    parser.add_argument("trl_args", nargs=argparse.REMAINDER, help="--config FILE and/or --flag value pairs")
    return parser


def run(args: argparse.Namespace) -> int:
    return main(args.trl_args)


def build_parser():
    from trl import TrlParser

    from ..trainers.training_config import DMoERMDataArguments, DMoERMModelArguments, DMoERMTrainingConfig
    from ._errors import one_line_parser_errors

    return one_line_parser_errors(TrlParser(
        (DMoERMModelArguments, DMoERMDataArguments, DMoERMTrainingConfig), prog="dmoerm train", description=DESCRIPTION
    ))


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    for noisy in ("httpx", "datasets", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_config(argv: list[str]):
    """``(model_args, data_args, training_args)`` from ``--config``/flags; raises ``ValueError`` on bad values."""
    return build_parser().parse_args_and_config(list(argv))


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (printed as one message, exit code 2) rather than a bug (the ``dmoerm`` set:
    data errors, bad values, missing files, transformers' "not a valid model identifier" for a wrong backbone)."""
    from ._errors import user_errors as all_user_errors

    return all_user_errors()


def print_summary(summary: dict) -> None:
    print(f"\nDMoERM training finished: {summary['output_dir']}")
    print(f"{'stage':<58} {'status':<8} {'val acc':>8} {'seconds':>8}")
    for name, info in summary["stages"].items():
        accuracy = info.get("metrics", {}).get("eval_accuracy")
        accuracy = f"{accuracy:.3f}" if accuracy is not None else "-"
        seconds = info.get("train_seconds")
        seconds = f"{seconds:.1f}" if seconds is not None else "-"
        print(f"{name:<58} {info['status']:<8} {accuracy:>8} {seconds:>8}")
        if info["status"] == "skipped":
            print(f"    skipped: {info.get('reason')}")
    for warning in summary["data"]["warnings"]:
        print(f"warning: {warning}")
    print(f"wall time: {summary['wall_seconds_this_time']:.1f} s; summary: {summary['output_dir']}/training_summary.json")


def run_pipeline(argv: list[str] | None, command: str, configure=None) -> int:
    """Parse the TRL-style config, run the pipeline, print the summary; exit code 2 with a one-line error for bad
    input. ``configure(training_args)`` may adjust the parsed config first (``dmoerm train-baseline``)."""
    from ._errors import one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        model_args, data_args, training_args = parse_config(argv)
    except user_errors() as err:
        print(f"{command}: error: bad configuration: {one_line(err)}", file=sys.stderr)
        return 2
    from ..trainers.pipeline import DMoERMTrainingPipeline

    if configure is not None:
        configure(training_args)
    try:
        summary = DMoERMTrainingPipeline(model_args, data_args, training_args).run()
    except user_errors() as err:
        print(f"{command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    if training_args.process_index == 0:
        print_summary(summary)
        logging.getLogger(__name__).debug(json.dumps(summary, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_pipeline(argv, "dmoerm train")
