"""Phase 1: a category's task adapter and head, trained on that category's human-ranked pairs.

The task adapter learns "which response is better" for one category (the paper's phase 1, there a full fine-tune
of one base copy per category; here a LoRA adapter on the shared base). It is then copied into each of the
category's capability experts as their starting point (phase 2).

Example:
    >>> from dmoerm_trl.trainers import TaskTrainer
    >>> trainer = TaskTrainer(model, category="chitchat", args=reward_config,  # doctest: +SKIP
    ...                       train_dataset=chitchat_task_pairs, eval_dataset=chitchat_validation_pairs,
    ...                       processing_class=tokenizer)
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

from ._stage_reward_trainer import _StageRewardTrainer


class TaskTrainer(_StageRewardTrainer):
    """``trl.RewardTrainer`` on one category's task adapter + task head (a DMoERM's phase 1)."""

    stage_kind = "task"

    def __init__(self, model, category: str, args=None, **kwargs):
        super().__init__(model, category=category, capability=None, args=args, **kwargs)
