"""The shared base of the DMoERM stages trained with TRL's ``RewardTrainer``: phase 1 (task) and phase 2 (experts).

``TaskTrainer`` and ``CapabilityExpertTrainer`` are siblings on this base: each selects its stage on the model
(``model.set_training_stage``, so exactly one adapter and one head train), and checkpoints hold only those tensors
(``StageCheckpointMixin``). Everything ``RewardTrainer`` does applies unchanged.
"""

from __future__ import annotations

from trl import RewardTrainer

from .checkpointing import StageCheckpointMixin
from .distributed import cast_trainable_parameters_for_deepspeed


class _StageRewardTrainer(StageCheckpointMixin, RewardTrainer):
    """``RewardTrainer`` on one stage of a DMoERM (``stage_kind``: ``"task"`` or ``"capability"``)."""

    stage_kind: str

    def __init__(self, model, category: str, capability: str | None = None, args=None, **kwargs):
        self.category, self.capability = category, capability
        self.stage_name = "/".join(part for part in (self.stage_kind, category, capability) if part is not None)
        self.stage_parameter_names = model.set_training_stage(
            self.stage_kind, category=category, capability=capability
        )
        if args is not None:
            cast_trainable_parameters_for_deepspeed(model, args)
        super().__init__(model=model, args=args, **kwargs)

    def create_model_card(self, *args, **kwargs):
        # TRL writes a model card for every checkpoint; a stage checkpoint is not a model. The pipeline writes the
        # DMoERM's own card with the final model.
        return None
