"""Fixtures of the trainer tests: one finished tiny pipeline run (shared), one-thread torch."""

from __future__ import annotations

import pytest
from trainer_helpers import quick_args


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory):
    """One complete tiny pipeline run (all stages + baseline); returns (output_dir, summary)."""
    import torch

    from dmoerm_trl.commands.train import parse_config
    from dmoerm_trl.trainers import DMoERMTrainingPipeline

    threads = torch.get_num_threads()
    output_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    model_args, data_args, training_args = parse_config(quick_args(output_dir))
    try:
        summary = DMoERMTrainingPipeline(model_args, data_args, training_args).run()
    finally:
        torch.set_num_threads(threads)
    return output_dir, summary


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
