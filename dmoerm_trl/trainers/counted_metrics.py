"""Exact accuracy-style metrics for the custom stage Trainers (router, aggregator).

Sums (correct, total, margin, ...) are gathered from every process at each step and turned into ratios when the
Trainer logs, so the logged accuracy is over every example of the logging or evaluation period, on any number of
processes.
"""

from __future__ import annotations

from collections import defaultdict

import torch


class CountedMetricsMixin:
    """Mixin for a ``transformers.Trainer``: ``add_counts`` in ``compute_loss``, ratios from ``metrics_from_counts``."""

    def reset_counts(self) -> None:
        self._counts = {"train": defaultdict(float), "eval": defaultdict(float)}

    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    @torch.no_grad()
    def add_counts(self, **sums: torch.Tensor) -> None:
        """Add per-batch sums (0-d tensors), summed over all processes, to the current period's counts."""
        device = next(iter(sums.values())).device
        stats = torch.stack([value.float().to(device) for value in sums.values()])
        stats = self.accelerator.gather_for_metrics(stats.unsqueeze(0)).sum(0).tolist()
        counts = self._counts[self._mode()]
        for name, value in zip(sums, stats):
            counts[name] += value

    def metrics_from_counts(self, counts: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        counts = self._counts[self._mode()]
        prefix = "eval_" if self._mode() == "eval" else ""
        if counts["total"]:
            logs.update({f"{prefix}{name}": value for name, value in self.metrics_from_counts(counts).items()})
        super().log(logs, start_time)
        counts.clear()
