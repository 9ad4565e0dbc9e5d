"""``dmoerm train``: the whole DMoERM training pipeline from a TRL-style YAML config (+ CLI overrides).

    dmoerm train --config recipes/configs/tiny_cpu.yaml
    dmoerm train --config recipes/configs/tiny_cpu.yaml --output_dir runs/x --task_learning_rate 1e-3
    dmoerm train --help            # the DMoERM flags (model, data and per-phase training arguments)
    dmoerm train --help-all        # every flag, TRL's RewardConfig ones too

Rerunning the same command resumes: finished stages are skipped, an interrupted stage continues from its last
checkpoint. A rerun with settings that would change the result (other than logging, threads, stage selection ...)
is refused with the changed keys; ``--restart true`` deletes the old results and starts over. Under ``accelerate launch`` use ``recipes/train_dmoerm.py`` (the same code).
"""

from __future__ import annotations

import json
import logging

from ._trl_command import TrlCommand

DESCRIPTION = (
    "Train a DMoERM: router, then per category phase 1 (task adapter), phase 2 (capability experts) and phase 3 "
    "(aggregator), into one output folder that from_pretrained loads. Options come from --config YAML and/or flags "
    "(`--help-all` lists every flag, RewardConfig's too)."
)


def _dataclasses():
    from ..trainers.training_config import DMoERMDataArguments, DMoERMModelArguments, DMoERMTrainingConfig

    return (DMoERMModelArguments, DMoERMDataArguments, DMoERMTrainingConfig)


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
    print(
        f"wall time: {summary['wall_seconds_this_time']:.1f} s; summary: {summary['output_dir']}/training_summary.json"
    )


def pipeline_work(configure=None):
    """The work of ``dmoerm train``: run the pipeline and print the summary. ``configure(training_args)`` may adjust
    the parsed config first (``dmoerm train-baseline``)."""

    def work(parsed, prog: str) -> int:
        from ..trainers.pipeline import DMoERMTrainingPipeline

        model_args, data_args, training_args = parsed
        if configure is not None:
            configure(training_args)
        summary = DMoERMTrainingPipeline(model_args, data_args, training_args).run()
        if training_args.process_index == 0:
            print_summary(summary)
            logging.getLogger(__name__).debug(json.dumps(summary, default=str))
        return 0

    return work


COMMAND = TrlCommand("dmoerm train", _dataclasses, pipeline_work(), DESCRIPTION)
add_parser, run, main, build_parser = COMMAND.add_parser, COMMAND.run, COMMAND.main, COMMAND.build_parser


def parse_config(argv: list[str]):
    """``(model_args, data_args, training_args)`` from ``--config``/flags; raises ``ValueError`` on bad values."""
    return COMMAND.parse(argv)
