"""The baseline DMoERM is compared with: one reward model for all categories, trained with TRL's RewardTrainer.

Same backbone, same human pairs (all of a DMoERM run's phase-1 and phase-3 pairs; the same validation split), loaded
with ``AutoModelForSequenceClassification`` (``num_labels=1``) exactly as TRL does for a model id. By default it
trains a LoRA adapter with DMoERM's rank/alpha plus the score head (``baseline_use_lora``), so the two differ in the
mixture-of-experts structure, not in the kind of fine-tuning; ``baseline_use_lora: false`` trains all weights.

The result is saved as a plain sequence-classification model (LoRA merged into the weights) that
``AutoModelForSequenceClassification.from_pretrained`` loads, so ``dmoerm eval --baseline`` reads it like any RM.

Example:
    >>> from dmoerm_trl.trainers.baseline import train_baseline_reward_model
    >>> metrics = train_baseline_reward_model("path/to/backbone", tokenizer, train_pairs, validation_pairs,  # doctest: +SKIP
    ...                                       reward_config, output_dir="runs/dmoerm/baseline")
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..utils.io import apply_umask, replace_path
from .checkpointing import atomic_write_json, last_complete_checkpoint

logger = logging.getLogger(__name__)


def train_baseline_reward_model(
    backbone_path: str,
    tokenizer,
    train_dataset,
    eval_dataset,
    args,
    output_dir: str | Path,
    use_lora: bool = True,
    lora_r: int = 32,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    lora_target_modules: list[str] | None = None,
    early_stopping_patience: int | None = None,
    callbacks=None,
) -> dict[str, float]:
    """Train the single-RM baseline with ``trl.RewardTrainer``; save it to ``output_dir``; return validation metrics.

    ``args`` is a ``RewardConfig`` (its ``output_dir`` holds the resumable checkpoints). Pairs may be conversational
    or tokenized (``chosen_ids``/``rejected_ids``).
    """
    from accelerate import PartialState
    from transformers import EarlyStoppingCallback
    from trl import RewardTrainer

    columns = ["chosen_ids", "rejected_ids"]
    if "chosen_ids" in train_dataset.column_names:
        train_dataset = train_dataset.select_columns(columns)
        eval_dataset = eval_dataset.select_columns(columns) if eval_dataset is not None else None
    eval_dataset = eval_dataset if eval_dataset is not None and len(eval_dataset) else None
    peft_config = None
    if use_lora:
        from peft import LoraConfig

        from ..models.dmoerm._backbone import detect_lora_target_modules

        if lora_target_modules is None:
            import torch
            from transformers import AutoConfig, AutoModel

            with torch.device("meta"):  # module names only, no weights
                probe = AutoModel.from_config(AutoConfig.from_pretrained(backbone_path))
            lora_target_modules = detect_lora_target_modules(probe)
            del probe
        # task_type SEQ_CLS: PEFT also trains and saves the (new, random) score head.
        peft_config = LoraConfig(
            task_type="SEQ_CLS",
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=lora_target_modules,
        )
    callbacks = list(callbacks or [])
    if eval_dataset is not None and early_stopping_patience is not None and args.eval_strategy != "no":
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    trainer = RewardTrainer(
        model=backbone_path,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    is_main = PartialState().is_main_process
    if is_main:
        last_complete_checkpoint(args.output_dir, remove_incomplete=True)
    PartialState().wait_for_everyone()
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(args.output_dir))
    metrics = trainer.evaluate() if eval_dataset is not None else {}
    if is_main:
        atomic_write_json(Path(args.output_dir) / "log_history.json", trainer.state.log_history)

    output_dir = Path(output_dir)
    tmp = output_dir.with_name(f".{output_dir.name}-tmp")
    if trainer.is_deepspeed_enabled:
        # Parameters are sharded: let the Trainer gather them (a PEFT adapter folder when use_lora).
        trainer.save_model(str(tmp))
    elif is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        model = trainer.accelerator.unwrap_model(trainer.model)
        if use_lora:
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    if is_main:
        atomic_write_json(tmp / "baseline_metrics.json", metrics)
        replace_path(tmp, output_dir)
        apply_umask(output_dir)  # save_pretrained's safetensors files are 0o600
    PartialState().wait_for_everyone()
    return metrics
