"""The router: the outer (sparse) MoE's classifier from a conversation's prompt to its task category.

The router reads the prompt only (all turns before the final assistant response), at inference and in training
alike: each labelled conversation gives one example, its token ids up to and including the chat template's
assistant-turn opener (``config.assistant_opener_ids``), exactly the tokens the model's router pools over when it
scores the conversation with a response. Accuracy is ``accuracy`` (= ``accuracy_prompt``), used for best-checkpoint
selection.

A model without a recorded prompt boundary (built without a tokenizer) routes on the whole text; its router is then
trained on two views, as before prompt-only routing: the prompt (``accuracy_prompt``) and each full conversation
(``accuracy_full``).

Example:
    >>> from dmoerm_trl.trainers import RouterTrainer
    >>> trainer = RouterTrainer(model, args=training_args, train_dataset=pairs, eval_dataset=validation_pairs,  # doctest: +SKIP
    ...                         processing_class=tokenizer)
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from transformers import Trainer

from .._compat import SignatureColumnsHook
from ..data.batching import pad_sequences
from ..data.tokenize import routing_prompt, tokenize_pairs
from ..models.dmoerm._prompt_boundary import PromptBoundaryError, prompt_prefix
from .checkpointing import StageCheckpointMixin
from .counted_metrics import CountedMetricsMixin
from .distributed import cast_trainable_parameters_for_deepspeed

VIEWS = ("prompt", "full")


def routing_prompt_ids(conversation_ids, opener: list[int], what: str = "conversation") -> list[int]:
    """The tokens the router reads of one tokenized conversation: up to and including its last ``opener``.

    Example:
        >>> routing_prompt_ids([5, 1, 2, 7, 1, 2, 8, 9], [1, 2])
        [5, 1, 2, 7, 1, 2]
    """
    prefix = prompt_prefix(list(conversation_ids), opener)
    if prefix is None:
        raise PromptBoundaryError(
            f"{what}: its token ids do not contain the chat template's assistant-turn opener {opener}, so its prompt "
            "cannot be found; tokenize conversations with the same tokenizer (and chat template) as the model"
        )
    return prefix


def router_examples(pairs, tokenizer, category_names: list[str], max_length: int | None = None, opener=None):
    """Router training examples from preference pairs with a ``category``; rows without a category are ignored.

    With ``opener`` (the model's ``config.assistant_opener_ids``): one example per conversation, its prompt as the
    router reads it (:func:`routing_prompt_ids` of the chosen conversation), view 0. Without: the prompt (view 0)
    and each distinct full conversation (view 1), for a router that reads the whole text.

    ``pairs`` have ``prompt``/``chosen``/``rejected``/``category``; token id columns ``prompt_ids``/``chosen_ids``/
    ``rejected_ids`` are used when present. Returns a ``datasets.Dataset`` with ``input_ids``, ``labels`` (category
    index) and ``view``.
    """
    from datasets import Dataset

    if "chosen_ids" not in pairs.column_names:
        pairs = tokenize_pairs(pairs, tokenizer, None, "router data")
    text = "chosen_prompt_length" in pairs.column_names
    index = {name: i for i, name in enumerate(category_names)}
    seen: set[tuple] = set()
    rows = {"input_ids": [], "labels": [], "view": [], "prompt_only": []}
    for number, row in enumerate(pairs):
        category = row["category"]
        if not category:
            continue
        if category not in index:
            raise ValueError(f"router data: category {category!r} is not one of the model's {category_names}")
        if text or opener:  # the prompt alone, exactly what the router reads when it scores the pair
            views = [(0, routing_prompt(row, opener, f"router data, row {number}"))]
        else:
            views = [(0, row["prompt_ids"]), (1, row["chosen_ids"]), (1, row["rejected_ids"])]
        for view, ids in views:
            key = (view, tuple(ids))
            if key in seen or (max_length is not None and len(ids) > max_length):
                continue
            seen.add(key)
            rows["input_ids"].append(list(ids))
            rows["labels"].append(index[category])
            rows["view"].append(view)
            rows["prompt_only"].append(int(text or bool(opener)))
    return Dataset.from_dict(rows)


class RouterCollator:
    """Right-pads ``input_ids``; stacks ``labels`` and ``view``. When every example is a prompt alone
    (``prompt_only``: a text pair's prompt has no chat-template opener to find), the batch's ``prompt_mask`` is its
    attention mask: the router reads all of it."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples):
        input_ids, attention_mask = pad_sequences([example["input_ids"] for example in examples], self.pad_token_id)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
            "view": torch.tensor([example["view"] for example in examples], dtype=torch.long),
        }
        if all(example.get("prompt_only") for example in examples):
            batch["prompt_mask"] = attention_mask.clone()
        return batch


class RouterTrainer(CountedMetricsMixin, SignatureColumnsHook, StageCheckpointMixin, Trainer):
    """Trains the router adapter (``router_mode="lora"``) or the router head alone (``"linear"``) of a DMoERM.

    Args:
        model: a [`DMoERMForSequenceClassification`].
        args: `TrainingArguments` (e.g. a [`DMoERMTrainingConfig`]).
        train_dataset / eval_dataset: preference pairs with a ``category`` (turned into router examples by
            :func:`router_examples`), or a dataset already in that form (``input_ids``, ``labels``, ``view``).
        processing_class: the tokenizer (needs a pad token and a chat template).
    """

    stage_name = "router"

    signature_columns = ("input_ids", "labels", "view", "prompt_only")  # what the collator reads

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
            return router_examples(dataset, processing_class, names, max_length, model.config.assistant_opener_ids)

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
