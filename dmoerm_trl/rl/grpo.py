"""TRL GRPO and RLOO with a DMoERM (or any reward model, or an ensemble) as ``reward_funcs``.

TRL's ``GRPOTrainer`` and ``RLOOTrainer`` (trl 1.12 and 1.16 alike) accept any ``nn.Module`` with a ``.config`` as a
reward function: they decode the completions, rebuild the texts (chat template for conversations), re-tokenize them
with the matching ``reward_processing_classes`` entry (right padding, no special tokens), call the model under
``inference_mode`` and read ``logits[:, 0]``. So a DMoERM or a ``RewardEnsemble`` is passed as is, alone or in a
list with other reward functions weighted by ``reward_weights``. The reward model's tokenizer may differ from the
policy's. An ensemble whose members have *different* tokenizers goes in as ``ensemble.as_reward_function()``.

Always pass ``reward_processing_classes`` (otherwise TRL tries to download the tokenizer from the hub).

Example:
    >>> from trl import GRPOConfig, GRPOTrainer
    >>> trainer = GRPOTrainer(model=policy_path, args=GRPOConfig(output_dir="out", bf16=False),  # doctest: +SKIP
    ...                       train_dataset=prompts, processing_class=policy_tokenizer,
    ...                       reward_funcs=[dmoerm, length_penalty], reward_processing_classes=[dmoerm_tokenizer, None])
    >>> trainer.train()                                                          # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import time

from ..utils.io import apply_umask
from .checks import check_reward_model_ready


def reward_funcs_for(reward_model, reward_tokenizer, extra_reward_functions=()) -> tuple[list, list]:
    """``(reward_funcs, reward_processing_classes)`` for GRPO/RLOO: the reward model first, then the extra functions.

    A reward model without a single tokenizer (an ensemble of members with different tokenizers) is wrapped with
    ``as_reward_function()`` so each member re-tokenizes the text itself.
    """
    check_reward_model_ready(reward_model)
    if reward_tokenizer is None:
        if getattr(reward_model, "tokenizers", None):
            funcs, classes = [reward_model.as_reward_function()], [None]
        else:
            raise ValueError(
                "GRPO/RLOO re-tokenize text for the reward model and need its tokenizer "
                "(reward_processing_classes); pass the reward tokenizer"
            )
    else:
        if reward_tokenizer.pad_token_id is None:
            raise ValueError(
                "the reward tokenizer has no pad token (GRPO pads reward inputs); set reward_tokenizer.pad_token"
            )
        funcs, classes = [reward_model], [reward_tokenizer]
    for function in extra_reward_functions:
        funcs.append(import_reward_function(function) if isinstance(function, str) else function)
        classes.append(None)
    return funcs, classes


def import_reward_function(spec: str):
    """Import ``"package.module:function"`` (a TRL reward function ``f(prompts, completions, **kwargs)``)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"reward function {spec!r} must be 'package.module:function'")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import reward function {spec!r}: {err}") from None
    if not callable(function):
        raise TypeError(f"reward function {spec!r} is not callable")
    return function


def run_grpo(script_args, training_args, algorithm: str = "grpo") -> dict:
    """The GRPO/RLOO recipe: prompts, policy, the reward model as ``reward_funcs`` (+ extras), optional gold
    tracking; trains and saves. Used by ``recipes/grpo.py``, ``recipes/rloo.py``, ``dmoerm grpo`` and ``dmoerm rloo``.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from .recipe_args import (
        build_proxy_reward,
        load_policy_tokenizer,
        load_prompt_splits,
        load_reward_model,
        make_gold_callback,
        write_summary,
    )

    if algorithm == "grpo":
        from trl import GRPOTrainer as Trainer
    elif algorithm == "rloo":
        from trl import RLOOTrainer as Trainer
    else:
        raise ValueError(f"algorithm must be 'grpo' or 'rloo', got {algorithm!r}")
    start = time.time()
    torch.manual_seed(training_args.seed)
    tokenizer = load_policy_tokenizer(script_args.policy_model_path, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(script_args.policy_model_path)
    reward_model, reward_tokenizer = build_proxy_reward(script_args)
    reward_funcs, reward_classes = reward_funcs_for(reward_model, reward_tokenizer, script_args.extra_reward_functions)
    if training_args.reward_weights is not None and len(training_args.reward_weights) != len(reward_funcs):
        raise ValueError(
            f"reward_weights has {len(training_args.reward_weights)} entries but there are {len(reward_funcs)} "
            "reward functions (the reward model first, then extra_reward_functions)"
        )
    max_new_tokens = training_args.max_completion_length or 256
    train_prompts, heldout_prompts = load_prompt_splits(script_args, tokenizer, policy, max_new_tokens=max_new_tokens)
    callbacks = []
    if script_args.gold_model_path:
        gold = load_reward_model(script_args.gold_model_path, flag="gold_model_path")
        callbacks.append(
            make_gold_callback(script_args, heldout_prompts, gold, reward_model, reward_tokenizer, tokenizer)
        )
    # RLOO (beta > 0) reloads the reference from the policy's path: pass the path, not an in-memory copy.
    trainer = Trainer(
        model=script_args.policy_model_path if algorithm == "rloo" else policy,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=Dataset.from_dict({"prompt": train_prompts}),
        processing_class=tokenizer,
        reward_processing_classes=reward_classes,
        callbacks=callbacks,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        apply_umask(training_args.output_dir, "*.safetensors")  # safetensors writes the policy's weights 0o600
    return write_summary(training_args, trainer, algorithm, start, callbacks)
