"""The router: the outer (sparse) MoE's classifier from a conversation to its task category.

The router is trained on two views of every labelled conversation, so that it routes correctly in both places a
reward model is used:

* ``prompt``: the conversation up to the last user turn (what a pipeline that routes before generation sees);
* ``full``: the conversation with a response (what RewardTrainer pairs, PPO and GRPO give the reward model).

Accuracy is reported for each view (``accuracy_prompt``, ``accuracy_full``) and overall (``accuracy``, used for
best-checkpoint selection).

Example:
    >>> from dmoerm_trl.trainers import RouterTrainer
    >>> trainer = RouterTrainer(model, args=training_args, train_dataset=pairs, eval_dataset=validation_pairs,  # doctest: +SKIP
    ...                         processing_class=tokenizer)
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from transformers import Trainer

from .checkpointing import StageCheckpointMixin
from .counted_metrics import CountedMetricsMixin
from .distributed import cast_trainable_parameters_for_deepspeed
from .preference_data import tokenize_messages

VIEWS = ("prompt", "full")


def router_examples(pairs, tokenizer, category_names: list[str], max_length: int | None = None):
    """One example per view: the prompt once per conversation, each distinct full conversation once.

    ``pairs`` are preference pairs (``prompt``/``chosen``/``rejected``/``category``; token id columns
    ``prompt_ids``/``chosen_ids``/``rejected_ids`` are used when present). Rows without a category are ignored.
    Returns a ``datasets.Dataset`` with ``input_ids``, ``labels`` (category index) and ``view`` (0 prompt, 1 full).
    """
    from datasets import Dataset

    index = {name: i for i, name in enumerate(category_names)}
    seen: set[tuple] = set()
    rows = {"input_ids": [], "labels": [], "view": []}
    has_ids = "chosen_ids" in pairs.column_names
    for row in pairs:
        category = row["category"]
        if not category:
            continue
        if category not in index:
            raise ValueError(f"router data: category {category!r} is not one of the model's {category_names}")
        if has_ids:
            views = [(0, row["prompt_ids"]), (1, row["chosen_ids"]), (1, row["rejected_ids"])]
        else:
            views = [
                (0, tokenize_messages(tokenizer, row["prompt"])),
                (1, tokenize_messages(tokenizer, row["prompt"] + row["chosen"])),
                (1, tokenize_messages(tokenizer, row["prompt"] + row["rejected"])),
            ]
        for view, ids in views:
            key = (view, tuple(ids))
            if key in seen or (max_length is not None and len(ids) > max_length):
                continue
            seen.add(key)
            rows["input_ids"].append(list(ids))
            rows["labels"].append(index[category])
            rows["view"].append(view)
    return Dataset.from_dict(rows)


class RouterCollator:
    """Right-pads ``input_ids``; stacks ``labels`` and ``view``."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples):
        length = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for i, example in enumerate(examples):
            ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
            "view": torch.tensor([example["view"] for example in examples], dtype=torch.long),
        }


class RouterTrainer(CountedMetricsMixin, StageCheckpointMixin, Trainer):
    """Trains the router adapter (``router_mode="lora"``) or the router head alone (``"linear"``) of a DMoERM.

    Args:
        model: a [`DMoERMForSequenceClassification`].
        args: `TrainingArguments` (e.g. a [`DMoERMTrainingConfig`]).
        train_dataset / eval_dataset: preference pairs with a ``category`` (turned into both views by
            :func:`router_examples`), or a dataset already in that form (``input_ids``, ``labels``, ``view``).
        processing_class: the tokenizer (needs a pad token and a chat template).
    """

    stage_name = "router"

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, processing_class=None, **kwargs):
        if processing_class is None or processing_class.pad_token_id is None:
            raise ValueError("RouterTrainer needs processing_class= a tokenizer with a pad token")
        self.stage_parameter_names = model.set_training_stage("router")
        cast_trainable_parameters_for_deepspeed(model, args)
        names = model.config.category_names
        max_length = getattr(args, "max_length", None) or model.config.max_position_embeddings

        def prepare(dataset):
            if dataset is None or "view" in dataset.column_names:
                return dataset
            return router_examples(dataset, processing_class, names, max_length)

        super().__init__(
            model=model,
            args=args,
            data_collator=kwargs.pop("data_collator", None) or RouterCollator(processing_class.pad_token_id),
            train_dataset=prepare(train_dataset),
            eval_dataset=prepare(eval_dataset),
            processing_class=processing_class,
            **kwargs,
        )
        # As in TRL's RewardTrainer: evaluation goes through compute_loss, metrics through self._metrics.
        self.can_return_loss = True
        self.label_names = []
        self.reset_counts()

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", "view"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        view = inputs.pop("view")
        labels = inputs["labels"]
        outputs = model(**inputs)
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels)
        correct = (outputs.logits.detach().argmax(-1) == labels).float()
        sums = {"correct": correct.sum(), "total": torch.tensor(len(labels))}
        for v, name in enumerate(VIEWS):
            sums[f"correct_{name}"] = correct[view == v].sum()
            sums[f"total_{name}"] = (view == v).sum()
        self.add_counts(**sums)
        return (loss, outputs) if return_outputs else loss

    def metrics_from_counts(self, counts: dict[str, float]) -> dict[str, float]:
        metrics = {"accuracy": counts["correct"] / counts["total"]}
        for name in VIEWS:
            if counts[f"total_{name}"]:
                metrics[f"accuracy_{name}"] = counts[f"correct_{name}"] / counts[f"total_{name}"]
        return metrics
