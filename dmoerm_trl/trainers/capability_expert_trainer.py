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

from ._stage_reward_trainer import _StageRewardTrainer


class CapabilityExpertTrainer(_StageRewardTrainer):
    """``RewardTrainer`` for one part of a DMoERM: the expert ``capability`` of ``category``.

    Args:
        model: a [`DMoERMForSequenceClassification`].
        category: the category whose expert trains.
        capability: the capability point (required; the category's task adapter is [`TaskTrainer`]'s, phase 1).
        args, train_dataset, eval_dataset, processing_class, callbacks, ...: as for ``trl.RewardTrainer``
            (pairs in TRL's preference format, conversational or text, or already tokenized).
    """

    stage_kind = "capability"

    def __init__(self, model, category: str, capability: str | None = None, args=None, **kwargs):
        if capability is None:
            raise ValueError(
                f"CapabilityExpertTrainer needs capability=, one of {model.config.categories.get(category)}; "
                "use TaskTrainer to train the category's task adapter (phase 1)"
            )
        super().__init__(model, category=category, capability=capability, args=args, **kwargs)
