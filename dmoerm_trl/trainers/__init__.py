"""Training DMoERM with TRL: the router, the three phases, the whole pipeline, and the single-RM baseline.

Example:
    >>> from trl import TrlParser
    >>> from dmoerm_trl.trainers import (DMoERMDataArguments, DMoERMModelArguments, DMoERMTrainingConfig,
    ...                                  DMoERMTrainingPipeline)
    >>> parser = TrlParser((DMoERMModelArguments, DMoERMDataArguments, DMoERMTrainingConfig))
    >>> model_args, data_args, training_args = parser.parse_args_and_config(  # doctest: +SKIP
    ...     ["--config", "recipes/configs/tiny_cpu.yaml"])
    >>> DMoERMTrainingPipeline(model_args, data_args, training_args).run()  # doctest: +SKIP
"""

from __future__ import annotations

from ..data.errors import TrainingDataError
from .aggregator_trainer import AggregatorTrainer
from .capability_expert_trainer import CapabilityExpertTrainer
from .pipeline import DMoERMTrainingPipeline, Stage
from .router_trainer import RouterTrainer
from .task_trainer import TaskTrainer
from .training_config import DMoERMDataArguments, DMoERMModelArguments, DMoERMTrainingConfig

__all__ = [
    "AggregatorTrainer",
    "CapabilityExpertTrainer",
    "DMoERMDataArguments",
    "DMoERMModelArguments",
    "DMoERMTrainingConfig",
    "DMoERMTrainingPipeline",
    "RouterTrainer",
    "Stage",
    "TaskTrainer",
    "TrainingDataError",
]
