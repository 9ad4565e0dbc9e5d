"""Stage checkpoints that hold only what a stage trains, and crash-safe files for the pipeline.

A DMoERM stage trains a small part of a large model (one LoRA adapter and its head, or one MLP). The Trainer's
default checkpoint would write every parameter, including the frozen backbone, at every save; and its resume logic
expects the whole model. :class:`StageCheckpointMixin` makes a stage checkpoint hold only the stage's trainable
tensors (``model.safetensors``, the file name the Trainer looks for), and loads it back on resume and for
best-checkpoint selection. Optimizer, scheduler, RNG and trainer state are the Trainer's own files, so resuming
restores the exact position in training.

The Trainer writes a checkpoint's files one after the other, ``trainer_state.json`` last: a checkpoint without a
readable ``trainer_state.json`` was interrupted (e.g. by ``kill -9``) and is discarded by
:func:`last_complete_checkpoint`.

Example:
    >>> from dmoerm_trl.trainers.checkpointing import last_complete_checkpoint
    >>> last_complete_checkpoint("runs/dmoerm/stages/task__chitchat")  # doctest: +SKIP
    'runs/dmoerm/stages/task__chitchat/checkpoint-12'
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from .._compat import TrainerCheckpointHooks

# The package's one atomic-write helper, under the names the trainers import from here.
from ..utils.io import atomic_save_safetensors as atomic_save_tensors
from ..utils.io import atomic_write_json

logger = logging.getLogger(__name__)

STAGE_WEIGHTS_NAME = "model.safetensors"  # = transformers' SAFE_WEIGHTS_NAME, so the Trainer finds the checkpoint
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def load_tensors_into(model: torch.nn.Module, path: str | os.PathLike, expected: list[str] | None = None) -> list[str]:
    """Load a stage's tensors into ``model`` (by parameter name); returns the names loaded.

    Raises ``ValueError`` naming the file when a tensor has no parameter of that name or shape in ``model``, or when
    an ``expected`` name is missing from the file (a checkpoint of another stage or model).
    """
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    parameters = {**dict(model.named_buffers()), **dict(model.named_parameters())}  # buffers: e.g. statistics
    unknown = [name for name in tensors if name not in parameters]
    if unknown:
        raise ValueError(f"{path}: tensors {unknown[:3]} are not parameters of this model; is it another model's?")
    mismatched = [n for n, t in tensors.items() if tuple(t.shape) != tuple(parameters[n].shape)]
    if mismatched:
        raise ValueError(f"{path}: shapes of {mismatched[:3]} differ from this model's; saved from another config?")
    if expected is not None:
        missing = [name for name in expected if name not in tensors]
        if missing:
            raise ValueError(f"{path}: misses {len(missing)} of the stage's parameters (e.g. {missing[:2]})")
    with torch.no_grad():
        for name, tensor in tensors.items():
            parameters[name].copy_(tensor.to(parameters[name].dtype))
    return list(tensors)


def checkpoint_is_complete(folder: str | os.PathLike) -> bool:
    """True when the Trainer finished writing this checkpoint (its ``trainer_state.json`` is readable)."""
    state = Path(folder) / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = (STAGE_WEIGHTS_NAME, "adapter_model.safetensors", "latest")  # stage, PEFT (baseline), DeepSpeed
    return any((Path(folder) / name).exists() for name in weights)


def last_complete_checkpoint(stage_dir: str | os.PathLike, remove_incomplete: bool = False) -> str | None:
    """The newest complete ``checkpoint-N`` folder of a stage, or ``None``.

    With ``remove_incomplete=True``, interrupted checkpoints (from a killed run) are deleted, so that the resumed run
    can write a checkpoint of the same step again.
    """
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return None
    checkpoints = sorted(
        (int(m.group(1)), p) for p in stage_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
    )
    last = None
    for _, folder in checkpoints:
        if checkpoint_is_complete(folder):
            last = folder
        elif remove_incomplete:
            logger.warning("Removing the interrupted checkpoint %s (it was never completed).", folder)
            shutil.rmtree(folder, ignore_errors=True)
    return str(last) if last is not None else None


class StageCheckpointMixin(TrainerCheckpointHooks):
    """Mixin for Trainers of one DMoERM stage: checkpoints hold only ``self.stage_parameter_names``.

    The subclass sets ``self.stage_parameter_names`` (the names returned by ``model.set_training_stage``) before
    calling the Trainer's ``__init__``. The Trainer reaches these methods through its private checkpoint hooks
    (``dmoerm_trl/_compat.py``).
    """

    stage_parameter_names: list[str]

    def save_stage_checkpoint(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the stage's tensors (what ``Trainer._save`` does for a whole model)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        missing = [name for name in self.stage_parameter_names if name not in state_dict]
        if missing:
            raise RuntimeError(
                f"cannot save the stage checkpoint: {len(missing)} trainable tensors are not in the state dict "
                f"(e.g. {missing[:2]}). Under DeepSpeed ZeRO-3 set zero3_save_16bit_model: true in the accelerate "
                "config (stage3_gather_16bit_weights_on_model_save)."
            )
        os.makedirs(output_dir, exist_ok=True)
        tensors = {name: state_dict[name] for name in self.stage_parameter_names}
        atomic_save_tensors(tensors, Path(output_dir) / STAGE_WEIGHTS_NAME, {"dmoerm_stage": self.stage_name})
        atomic_write_json(Path(output_dir) / "training_args.json", self.args.to_dict())

    def load_stage_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load a stage checkpoint's tensors into the model (on resume and for the best checkpoint)."""
        model = model if model is not None else self.model
        path = Path(resume_from_checkpoint) / STAGE_WEIGHTS_NAME
        if not path.exists():
            raise ValueError(f"{resume_from_checkpoint} is not a DMoERM stage checkpoint (no {STAGE_WEIGHTS_NAME})")
        load_tensors_into(self.accelerator.unwrap_model(model), path, expected=self.stage_parameter_names)
        logger.info("Loaded the %s stage weights from %s", self.stage_name, resume_from_checkpoint)

    def load_best_stage_checkpoint(self) -> None:
        """Load the best checkpoint's stage tensors (``load_best_model_at_end``)."""
        best = self.state.best_model_checkpoint
        logger.info("Loading the best %s checkpoint %s (score %s).", self.stage_name, best, self.state.best_metric)
        self.load_stage_checkpoint(best)

    def stage_state_dict(self) -> dict[str, torch.Tensor]:
        """The stage's trained tensors (gathered from all ranks under DeepSpeed ZeRO-3). Call on every process."""
        if self.is_deepspeed_enabled:
            state_dict = self.accelerator.get_state_dict(self.deepspeed)
        else:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        if not self.args.should_save:
            return {}
        return {name: state_dict[name] for name in self.stage_parameter_names}
