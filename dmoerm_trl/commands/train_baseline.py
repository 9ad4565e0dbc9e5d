"""``dmoerm train-baseline``: the single reward model DMoERM is compared with, from the same config.

    dmoerm train-baseline --config recipes/configs/tiny_cpu.yaml

Trains TRL's ``RewardTrainer`` on ``AutoModelForSequenceClassification`` with the same backbone, the same human pairs
(phase-1 + phase-3 splits) and the same validation split as ``dmoerm train`` with this config, into
``<output_dir>/baseline`` (resumable). ``dmoerm train`` does the same with ``train_baseline: true``.
"""

from __future__ import annotations

from ._trl_command import TrlCommand
from .train import DESCRIPTION, _dataclasses, pipeline_work


def _baseline_only(training_args) -> None:
    training_args.stages = "baseline"
    training_args.train_baseline = True


COMMAND = TrlCommand(
    "dmoerm train-baseline", _dataclasses, pipeline_work(_baseline_only), "Baseline for " + DESCRIPTION
)
add_parser, run, main = COMMAND.add_parser, COMMAND.run, COMMAND.main
