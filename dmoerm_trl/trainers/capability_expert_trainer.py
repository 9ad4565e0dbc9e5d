"""Phase 2: one capability expert (a LoRA adapter + its value head) trained with TRL's ``RewardTrainer``.

Each expert learns one capability point (e.g. objective QA / logic) from capability preference labels (the output
of ``dmoerm label``), with the pairwise loss ``-logsigmoid(r_chosen - r_rejected)`` of ``RewardTrainer``. Before
phase 2 the pipeline copies the category's phase-1 task adapter and head into every expert
(``model.init_experts_from_task``), as in the paper.

Everything ``RewardTrainer`` does applies (tokenization of conversational pairs, ``max_length``, ``margin``,
``center_rewards_coefficient``, metrics ``accuracy``/``margin``/rewards, ``report_to``), while the model's training
stage makes exactly one adapter and one head trainable and checkpoints hold only those tensors.

Example:
    >>> from dmoerm_trl.trainers import CapabilityExpertTrainer
    >>> trainer = CapabilityExpertTrainer(  # doctest: +SKIP
    ...     model, category="objective_qa", capability="logic", args=reward_config,
    ...     train_dataset=logic_labels, eval_dataset=logic_validation_labels, processing_class=tokenizer)
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

from trl import RewardTrainer

from .checkpointing import StageCheckpointMixin
from .distributed import cast_trainable_parameters_for_deepspeed


class CapabilityExpertTrainer(StageCheckpointMixin, RewardTrainer):
    """``RewardTrainer`` for one part of a DMoERM: the expert ``capability`` of ``category``.

    Args:
        model: a [`DMoERMForSequenceClassification`].
        category: the category whose expert trains.
        capability: the capability point. ``None`` trains the category's task adapter and head instead (phase 1,
            see [`TaskTrainer`]).
        args, train_dataset, eval_dataset, processing_class, callbacks, ...: as for ``trl.RewardTrainer``
            (pairs in TRL's preference format, conversational or text, or already tokenized).
    """

    stage_kind = "capability"

    def __init__(self, model, category: str, capability: str | None = None, args=None, **kwargs):
        if capability is None and self.stage_kind == "capability":
            raise ValueError(
                f"CapabilityExpertTrainer needs capability=, one of {model.config.categories.get(category)}; "
                "use TaskTrainer to train the category's task adapter (phase 1)"
            )
        stage = "capability" if capability is not None else "task"
        self.category, self.capability = category, capability
        self.stage_name = f"{stage}/{category}" + (f"/{capability}" if capability is not None else "")
        self.stage_parameter_names = model.set_training_stage(stage, category=category, capability=capability)
        if args is not None:
            cast_trainable_parameters_for_deepspeed(model, args)
        super().__init__(model=model, args=args, **kwargs)

    def create_model_card(self, *args, **kwargs):
        # TRL writes a model card for every checkpoint; a stage checkpoint is not a model. The pipeline writes the
        # DMoERM's own card with the final model.
        return None
