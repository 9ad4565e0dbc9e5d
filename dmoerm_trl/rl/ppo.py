"""TRL PPO with a DMoERM (or any reward model meeting TRL's contract) as the reward model.

TRL's PPO lives in ``trl.experimental.ppo`` in trl 1.10-1.12 and was removed in trl 1.13; :func:`require_ppo` returns
``(PPOConfig, PPOTrainer)`` or raises :class:`PPOUnavailableError` naming the supported range and the ``ppo`` extra.
:func:`build_ppo_trainer` checks what TRL does not before building the trainer: the reward model is in inference
mode and meets PPO's reward contract, and the policy and reward tokenizers agree (PPO feeds the policy's token ids
to the reward model without re-tokenizing). :func:`run_ppo` is what ``recipes/ppo.py`` and ``dmoerm ppo`` run.

Example:
    >>> from dmoerm_trl.rl.ppo import build_ppo_trainer, require_ppo
    >>> PPOConfig, _ = require_ppo()                                              # doctest: +SKIP
    >>> trainer = build_ppo_trainer(PPOConfig(output_dir="out", bf16=False), policy, tokenizer,   # doctest: +SKIP
    ...                             reward_model=dmoerm, value_model=value_model, train_dataset=dataset,
    ...                             reward_tokenizer=dmoerm_tokenizer)
    >>> trainer.train()                                                           # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time

from ..utils.io import apply_umask
from .checks import check_reward_model_ready, check_reward_model_vocab, check_tokenizers_match

logger = logging.getLogger(__name__)

PPO_SUPPORTED_RANGE = "trl>=1.10,<1.13"
PPO_INSTALL_HINT = 'pip install "dmoerm-trl[ppo]"'


class PPOUnavailableError(ImportError):
    """The installed TRL has no PPO trainer (``trl.experimental.ppo`` was removed in trl 1.13)."""


def _trl_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("trl")
    except (ImportError, PackageNotFoundError):  # pragma: no cover - trl is a dependency
        return "unknown"


def ppo_unavailable_reason() -> str:
    return (
        f"TRL PPO (trl.experimental.ppo) is not available in the installed trl {_trl_version()}: it exists in "
        f"{PPO_SUPPORTED_RANGE} (removed in trl 1.13). Install a supported TRL with {PPO_INSTALL_HINT}, or use "
        "GRPO/RLOO (`dmoerm grpo`, `dmoerm rloo`), which take a DMoERM as reward_funcs"
    )


def is_ppo_available() -> bool:
    """True when ``trl.experimental.ppo`` can be imported."""
    try:
        return importlib.util.find_spec("trl.experimental.ppo") is not None
    except (ImportError, ValueError):
        return False


def require_ppo():
    """``(PPOConfig, PPOTrainer)`` from ``trl.experimental.ppo``, or :class:`PPOUnavailableError` with the fix."""
    try:
        module = importlib.import_module("trl.experimental.ppo")
        return module.PPOConfig, module.PPOTrainer
    except ImportError as err:
        raise PPOUnavailableError(ppo_unavailable_reason()) from err


def check_ppo_setup(policy_tokenizer, reward_model, reward_tokenizer=None, reward_name: str = "reward model") -> None:
    """Everything checked before PPO starts: reward model mode and contract, tokenizer agreement, pad token."""
    if policy_tokenizer.pad_token_id is None:
        raise ValueError(
            "the policy tokenizer has no pad token; PPO masks padding by pad id. Add one "
            "(tokenizer.add_special_tokens({'pad_token': '[PAD]'}) and resize the policy's embeddings) or set "
            "tokenizer.pad_token to a token the policy never generates"
        )
    check_reward_model_ready(reward_model, name=reward_name, for_ppo=True)
    if reward_tokenizer is not None:
        check_tokenizers_match(policy_tokenizer, reward_tokenizer, reward_name=reward_name)
    else:
        member_tokenizers = getattr(reward_model, "tokenizers", None)
        for i, member_tokenizer in enumerate(member_tokenizers or []):
            check_tokenizers_match(policy_tokenizer, member_tokenizer, reward_name=f"{reward_name} member {i}")
        check_reward_model_vocab(policy_tokenizer, reward_model, reward_name=reward_name)


def build_ppo_trainer(
    args,
    policy,
    tokenizer,
    reward_model,
    value_model,
    train_dataset,
    reward_tokenizer=None,
    ref_model=None,
    eval_dataset=None,
    callbacks=None,
    peft_config=None,
):
    """Check the setup (:func:`check_ppo_setup`), then build ``trl.experimental.ppo.PPOTrainer``.

    ``reward_model`` is the DMoERM (or ``RewardEnsemble``, or HF sequence-classification RM) object itself; TRL calls
    it through ``getattr(rm, rm.base_model_prefix)(...)`` and ``rm.score(...)``.
    """
    _, PPOTrainer = require_ppo()
    check_ppo_setup(tokenizer, reward_model, reward_tokenizer)
    if getattr(getattr(value_model, "config", None), "model_type", "") in ("dmoerm", "dmoerm_reward_ensemble"):
        raise ValueError(
            "the value model must be a plain sequence-classification model whose score head reads every position "
            "(PPO trains it per token); a DMoERM or RewardEnsemble gives one reward per sequence. Use the policy or "
            "a plain reward model checkpoint loaded with AutoModelForSequenceClassification(num_labels=1)"
        )
    check_ppo_setup(tokenizer, value_model, None, reward_name="value model")
    return PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_model,
        reward_model=reward_model,
        train_dataset=train_dataset,
        value_model=value_model,
        eval_dataset=eval_dataset,
        callbacks=callbacks,
        peft_config=peft_config,
    )


# ------------------------------------------------------------------------------------------------ recipe
def run_ppo(script_args, training_args) -> dict:
    """The PPO recipe: load policy/reward/value models and prompts, check, train, save; returns a summary dict.

    Used by ``recipes/ppo.py`` and ``dmoerm ppo`` (arguments: :class:`~dmoerm_trl.rl.recipe_args.RLScriptArguments`
    and ``PPOConfig``).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from .recipe_args import (
        build_proxy_reward,
        encode_prompt,
        load_policy_tokenizer,
        load_prompt_splits,
        load_reward_model,
        load_value_model,
        make_gold_callback,
        write_summary,
    )

    require_ppo()
    start = time.time()
    torch.manual_seed(training_args.seed)
    tokenizer = load_policy_tokenizer(script_args.policy_model_path, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(script_args.policy_model_path)
    reward_model, reward_tokenizer = build_proxy_reward(script_args)
    value_model = load_value_model(script_args, reward_model)
    train_prompts, heldout_prompts = load_prompt_splits(
        script_args, tokenizer, policy, max_new_tokens=training_args.response_length
    )

    def encode(prompts):
        return [encode_prompt(tokenizer, p) for p in prompts]

    train_dataset = Dataset.from_dict({"input_ids": encode(train_prompts)})
    eval_dataset = Dataset.from_dict({"input_ids": encode(heldout_prompts)}) if heldout_prompts else None
    callbacks = []
    if script_args.gold_model_path:
        gold_model, gold_tokenizer = load_reward_model(script_args.gold_model_path, flag="gold_model_path")
        callbacks.append(
            make_gold_callback(
                script_args, heldout_prompts, (gold_model, gold_tokenizer), reward_model, reward_tokenizer, tokenizer
            )
        )
    trainer = build_ppo_trainer(
        training_args,
        policy,
        tokenizer,
        reward_model,
        value_model,
        train_dataset,
        reward_tokenizer=reward_tokenizer,
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )
    trainer.train()
    save_ppo_policy(trainer, training_args.output_dir)
    return write_summary(training_args, trainer, "ppo", start, callbacks)


def save_ppo_policy(trainer, output_dir: str) -> None:
    """Save the trained policy and its tokenizer (main process only).

    Not ``trainer.save_model``: with trl 1.12 + transformers 5 under DDP it saves the policy+value wrapper (shared
    tensors error) on the main process and fails with a missing Trainer attribute on the others.
    """
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        policy = accelerator.unwrap_model(trainer.model).policy
        policy.save_pretrained(output_dir)
        trainer.processing_class.save_pretrained(output_dir)
        apply_umask(output_dir, "*.safetensors")  # safetensors writes the policy's weights 0o600
    accelerator.wait_for_everyone()
