"""Phase 3: a category's aggregator MLP, trained on held-out human pairs over its frozen capability experts.

Only the MLP ``Linear(k*H, A) -> PReLU -> Linear(A, 1)`` trains; the k experts are frozen. Their concatenated
features ``(k*H)`` per sequence therefore never change, so with ``cache_expert_features=True`` (default) they are
computed once (k backbone passes per sequence, no gradient, with a progress bar) and every epoch then trains the MLP
on the cached vectors only: later epochs cost a small fraction of the first (see docs/benchmarks.md, "Training").
The cache can be stored in a safetensors file (``feature_cache_path``), so a resumed run does not recompute it; it
is recomputed when the pairs or the experts' weights differ from those it was computed with.

With ``cache_expert_features=False`` every step runs the experts again (the reference behaviour, for comparison).

Three things make phase 3 train and its output comparable across categories (docs/training.md, "Phase 3"):

- **Expert-feature standardisation** (``normalize_expert_features=True``): before training, each of the ``k*H``
  input dimensions is standardised by its mean and standard deviation over the phase-3 training texts (stored in
  the aggregator, saved with the model). The experts' features share one dominant direction, far larger than
  their variation between texts, which the raw MLP could hardly use.
- **Checkpoint selection on validation loss**, only when the validation split has at least ``min_validation_pairs``
  pairs; otherwise a fixed schedule (every epoch, the last weights, no early stopping). Selecting on the accuracy of
  6-7 validation pairs kept the first of many ties: the saved aggregators were 2-3 optimiser steps from their
  random start.
- **Reward calibration** (``calibrate_rewards=True``): after training, the category's raw rewards on its phase-3
  training texts give a mean and a standard deviation (stored in the aggregator) that the model's inference path
  uses to standardise the category's reward (``DMoERMConfig.calibrate_rewards``).

Example:
    >>> from dmoerm_trl.trainers import AggregatorTrainer
    >>> trainer = AggregatorTrainer(model, category="chitchat", args=training_args,  # doctest: +SKIP
    ...                             train_dataset=phase3_pairs, eval_dataset=validation_pairs,
    ...                             processing_class=tokenizer)
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset as TorchDataset
from transformers import Trainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from .._compat import SignatureColumnsHook
from ..data.batching import pad_sequences
from ..data.tokenize import tokenize_pairs
from .checkpointing import StageCheckpointMixin, atomic_save_tensors
from .counted_metrics import CountedMetricsMixin
from .distributed import cast_trainable_parameters_for_deepspeed

logger = logging.getLogger(__name__)


class ExpertFeaturePairs(TorchDataset):
    """Cached ``(chosen, rejected)`` expert feature vectors of preference pairs: ``(N, k*H)`` each."""

    def __init__(self, chosen: torch.Tensor, rejected: torch.Tensor):
        if chosen.shape != rejected.shape:
            raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} features differ")
        self.chosen, self.rejected = chosen, rejected

    def __len__(self) -> int:
        return self.chosen.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"chosen_features": self.chosen[index], "rejected_features": self.rejected[index]}


def collate_feature_pairs(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        "chosen_features": torch.stack([e["chosen_features"] for e in examples]),
        "rejected_features": torch.stack([e["rejected_features"] for e in examples]),
    }


@torch.no_grad()
def compute_pair_features(model, pairs, category: str, pad_token_id: int, batch_size: int = 32, desc: str = ""):
    """``(chosen, rejected)`` feature tensors ``(N, k*H)`` of tokenized pairs (``chosen_ids``/``rejected_ids``)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    sequences = list(pairs["chosen_ids"]) + list(pairs["rejected_ids"])
    # Sorting by length keeps padding (and so wasted compute) low; the order is restored afterwards.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    features: list[torch.Tensor | None] = [None] * len(sequences)
    for start in tqdm(range(0, len(order), batch_size), desc=desc or f"Expert features ({category})", unit="batch"):
        batch = order[start : start + batch_size]
        input_ids, attention_mask = pad_sequences([sequences[i] for i in batch], pad_token_id)
        out = model.compute_expert_features(input_ids.to(device), attention_mask.to(device), category)
        for row, i in enumerate(batch):
            features[i] = out[row].float().cpu()
    stacked = torch.stack(features) if features else torch.zeros(0, 0)
    return stacked[: len(pairs)], stacked[len(pairs) :]


def _experts_fingerprint(model, category: str, pair_ids: list[str]) -> str:
    digest = hashlib.sha1("\n".join(pair_ids).encode())
    experts = model.expert_adapter_names(category)
    for name, parameter in model.named_parameters():
        if any(
            f".{expert}." in name or name.endswith(f".{expert}") or f"value_heads.{expert}." in name
            for expert in experts
        ):
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class AggregatorTrainer(CountedMetricsMixin, SignatureColumnsHook, StageCheckpointMixin, Trainer):
    """Trains one category's aggregator MLP (phase 3) with the pairwise loss, optionally on cached features.

    Args:
        model: a [`DMoERMForSequenceClassification`] whose experts for ``category`` are trained (phase 2).
        category: the category whose aggregator trains.
        args: `TrainingArguments`.
        train_dataset / eval_dataset: preference pairs (conversational, or tokenized with ``chosen_ids`` and
            ``rejected_ids``).
        processing_class: the tokenizer.
        cache_expert_features: compute the frozen experts' features once (default) or at every step.
        feature_batch_size: batch size of the feature computation.
        feature_cache_path: optional safetensors file to store/reuse the cache (resume without recomputing).
        normalize_expert_features: standardise the aggregator's input per dimension on the training texts (default).
        calibrate_rewards: after training, store the mean/std of the category's raw rewards on its training texts,
            so that the model's reward is on one scale across categories (default).
        min_validation_pairs: below this many validation pairs, no best-checkpoint selection and no early stopping
            (a fixed schedule: every epoch, the last weights); from it on, selection on validation loss.
    """

    signature_columns = (
        "chosen_ids",
        "rejected_ids",
        "chosen_features",
        "rejected_features",
    )  # what the collator reads

    def __init__(
        self,
        model,
        category: str,
        args=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        cache_expert_features: bool = True,
        feature_batch_size: int = 32,
        feature_cache_path: str | None = None,
        normalize_expert_features: bool = True,
        calibrate_rewards: bool = True,
        min_validation_pairs: int = 32,
        **kwargs,
    ):
        if processing_class is None or processing_class.pad_token_id is None:
            raise ValueError("AggregatorTrainer needs processing_class= a tokenizer with a pad token")
        self.category = category
        self.stage_name = f"aggregator/{category}"
        self.cache_expert_features = cache_expert_features
        max_length = getattr(args, "max_length", None) or model.config.max_position_embeddings
        if train_dataset is not None and "chosen_ids" not in train_dataset.column_names:
            train_dataset = tokenize_pairs(train_dataset, processing_class, max_length, "phase-3 pairs")
        if eval_dataset is not None and "chosen_ids" not in eval_dataset.column_names:
            eval_dataset = tokenize_pairs(eval_dataset, processing_class, max_length, "validation pairs")
        self.stage_parameter_names = model.set_training_stage("aggregator", category=category)
        self.aggregator = model.aggregators[model._slug(category)]
        prefix = f"aggregators.{model._slug(category)}."
        # The statistics are buffers: saved with the stage's tensors (checkpoints, final.safetensors) and the model.
        self.stage_parameter_names += [prefix + name for name, _ in self.aggregator.named_buffers()]
        self.calibrate_rewards = calibrate_rewards
        if cache_expert_features:
            train_dataset, eval_dataset = self._cached_features(
                model,
                args,
                train_dataset,
                eval_dataset,
                processing_class.pad_token_id,
                feature_batch_size,
                feature_cache_path,
            )
            self.train_features = torch.cat([train_dataset.chosen, train_dataset.rejected]) if train_dataset else None
            collator = collate_feature_pairs
        else:
            self.train_features = None
            if train_dataset is not None and (normalize_expert_features or calibrate_rewards):
                # One pass for the statistics; training itself still runs the experts at every step.
                self.train_features = torch.cat(
                    compute_pair_features(
                        model,
                        train_dataset,
                        category,
                        processing_class.pad_token_id,
                        feature_batch_size,
                        desc=f"Expert features for the statistics ({category})",
                    )
                )
            keep = ["chosen_ids", "rejected_ids"]
            train_dataset = train_dataset.select_columns(keep) if train_dataset is not None else None
            eval_dataset = eval_dataset.select_columns(keep) if eval_dataset is not None else None
            collator = DataCollatorForPreference(pad_token_id=processing_class.pad_token_id)
        if normalize_expert_features and self.train_features is not None and len(self.train_features) >= 2:
            self.aggregator.set_feature_statistics(self.train_features)
        else:
            self.aggregator.feature_mean.zero_()
            self.aggregator.feature_std.fill_(1.0)
        args, kwargs["callbacks"] = self._selection(args, eval_dataset, min_validation_pairs, kwargs.get("callbacks"))
        if args is not None:
            cast_trainable_parameters_for_deepspeed(model, args)
        super().__init__(
            model=model,
            args=args,
            data_collator=kwargs.pop("data_collator", None) or collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.can_return_loss = True
        self.label_names = []
        self.reset_counts()

    def _selection(self, args, eval_dataset, min_validation_pairs: int, callbacks):
        """Best checkpoint on validation LOSS with enough validation pairs; otherwise a fixed schedule."""
        from transformers import EarlyStoppingCallback

        callbacks = list(callbacks or [])
        size = len(eval_dataset) if eval_dataset is not None else 0
        if args is None or not (
            args.load_best_model_at_end or any(isinstance(c, EarlyStoppingCallback) for c in callbacks)
        ):
            self.selection = "fixed schedule"
            return args, callbacks
        if size >= min_validation_pairs:
            self.selection = "validation loss"
            return dataclasses.replace(args, metric_for_best_model="eval_loss", greater_is_better=False), callbacks
        logger.warning(
            "aggregator/%s: %d validation pairs (< min_validation_pairs=%d): no best-checkpoint selection and no early "
            "stopping; phase 3 trains its fixed schedule (%s epochs) and keeps the last weights",
            self.category,
            size,
            min_validation_pairs,
            args.num_train_epochs,
        )
        self.selection = f"fixed schedule ({size} validation pairs < {min_validation_pairs})"
        args = dataclasses.replace(args, load_best_model_at_end=False, metric_for_best_model=None)
        return args, [c for c in callbacks if not isinstance(c, EarlyStoppingCallback)]

    def train(self, *args, **kwargs):
        """Train the aggregator, then calibrate the category's reward on its training texts."""
        output = super().train(*args, **kwargs)
        self.calibrate()
        return output

    @torch.no_grad()
    def calibrate(self) -> dict[str, float] | None:
        """Store the mean/std of the category's raw rewards on its phase-3 training texts (identity when
        ``calibrate_rewards=False``); returns them."""
        aggregator = self.aggregator
        if not self.calibrate_rewards or self.train_features is None or len(self.train_features) < 2:
            aggregator.reward_mean.zero_()
            aggregator.reward_std.fill_(1.0)
            return None
        from contextlib import nullcontext

        from .distributed import deepspeed_zero_stage

        gathered = nullcontext()
        if self.is_deepspeed_enabled and deepspeed_zero_stage(self.args) == 3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(aggregator.parameters()))
        with gathered:
            weight = aggregator.out.weight
            raw = torch.cat(
                [
                    aggregator(chunk.to(weight.device, weight.dtype)).float().cpu()
                    for chunk in self.train_features.split(1024)
                ]
            )
        aggregator.set_reward_calibration(raw)
        stats = {"reward_mean": aggregator.reward_mean.item(), "reward_std": aggregator.reward_std.item()}
        logger.info("aggregator/%s: calibrated on %d training texts: %s", self.category, len(raw), stats)
        return stats

    def _cached_features(self, model, args, train_dataset, eval_dataset, pad_token_id, batch_size, cache_path):
        from contextlib import nullcontext

        from safetensors import safe_open

        pair_ids = [
            f"train:{pid}"
            for pid in (
                train_dataset["pair_id"] if "pair_id" in train_dataset.column_names else range(len(train_dataset))
            )
        ]
        if eval_dataset is not None:
            pair_ids += [
                f"eval:{pid}"
                for pid in (
                    eval_dataset["pair_id"] if "pair_id" in eval_dataset.column_names else range(len(eval_dataset))
                )
            ]
        fingerprint = _experts_fingerprint(model, self.category, pair_ids)
        first = args.main_process_first(desc="expert feature cache") if (args is not None and cache_path) else None
        with first if first is not None else nullcontext():
            tensors = None
            if cache_path and Path(cache_path).exists():
                with safe_open(cache_path, framework="pt") as handle:
                    if (handle.metadata() or {}).get("fingerprint") == fingerprint:
                        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open)
                        logger.info("Reusing the cached expert features in %s", cache_path)
            if tensors is None:
                tensors = {}
                tensors["train_chosen"], tensors["train_rejected"] = compute_pair_features(
                    model,
                    train_dataset,
                    self.category,
                    pad_token_id,
                    batch_size,
                    desc=f"Expert features, phase-3 pairs ({self.category})",
                )
                if eval_dataset is not None:
                    tensors["eval_chosen"], tensors["eval_rejected"] = compute_pair_features(
                        model,
                        eval_dataset,
                        self.category,
                        pad_token_id,
                        batch_size,
                        desc=f"Expert features, validation pairs ({self.category})",
                    )
                if cache_path and (args is None or args.should_save):
                    atomic_save_tensors(tensors, cache_path, {"fingerprint": fingerprint})
        train = ExpertFeaturePairs(tensors["train_chosen"], tensors["train_rejected"])
        evaluation = (
            ExpertFeaturePairs(tensors["eval_chosen"], tensors["eval_rejected"]) if "eval_chosen" in tensors else None
        )
        return train, evaluation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "chosen_features" in inputs:
            features = torch.cat([inputs["chosen_features"], inputs["rejected_features"]])
            # The model's forward needs input_ids for the batch size and device only when expert_features is given.
            placeholder_ids = torch.zeros(features.shape[0], 1, dtype=torch.long, device=features.device)
            outputs = model(input_ids=placeholder_ids, expert_features=features)
        else:
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1).float(), chunks=2)
        loss = -torch.nn.functional.logsigmoid(rewards_chosen - rewards_rejected).mean()
        self.add_counts(
            correct=(rewards_chosen > rewards_rejected).sum(),
            total=torch.tensor(len(rewards_chosen)),
            margin=(rewards_chosen - rewards_rejected).detach().sum(),
        )
        return (loss, outputs) if return_outputs else loss

    def metrics_from_counts(self, counts: dict[str, float]) -> dict[str, float]:
        return {"accuracy": counts["correct"] / counts["total"], "margin": counts["margin"] / counts["total"]}
