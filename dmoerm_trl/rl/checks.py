"""Checks run before RL starts, so that a mis-set reward model or tokenizer fails with a clear error, not a silent
wrong reward: a reward model left in a training stage or with ``num_labels != 1``, a reward model that cannot meet
TRL PPO's contract, a policy/reward tokenizer mismatch (PPO feeds the policy's token ids to the reward model), a
reward that returns the wrong shape, prompts longer than the policy allows.

Example:
    >>> from dmoerm_trl.rl.checks import check_tokenizers_match
    >>> check_tokenizers_match(policy_tokenizer, reward_tokenizer)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Strings that exercise what usually differs between tokenizers: chat markup, whitespace, digits, punctuation,
# non-Latin scripts and emoji.
PROBE_STRINGS: tuple[str, ...] = (
    "Hello, world! How are you today?",
    "<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n84<|im_end|>",
    "  leading spaces, tabs\tand\nnewlines  ",
    "0123456789 3.14159 -42 1e-7",
    "你好，今天天气怎么样？",
    "Ünïcödé çharacters — and emoji 🙂",
    "def f(x):\n    return x ** 2  # code",
)


def _stage_of(model: nn.Module):
    """The DMoERM training stage name (``None`` in inference mode), or ``None`` for models without stages."""
    stage = getattr(model, "training_stage", None)
    if isinstance(stage, tuple):
        return stage[0] if stage else None
    return stage


def check_reward_model_ready(model: nn.Module, name: str = "reward model", for_ppo: bool = False) -> None:
    """Raise a ``ValueError`` if ``model`` cannot be used as a scalar reward model as it is.

    Checks: a DMoERM must be in inference mode (``model.set_training_stage(None)``); ``config.num_labels`` must be 1
    (a 2-label classifier is not a reward model); an ensemble's members are checked one by one. With
    ``for_ppo=True`` the model must also expose TRL PPO's contract: ``getattr(model, model.base_model_prefix)`` and
    ``model.score``.

    Example:
        >>> check_reward_model_ready(dmoerm_model, for_ppo=True)  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"the {name} must be a torch nn.Module (a PreTrainedModel), got {type(model).__name__}")
    stage = _stage_of(model)
    if stage is not None:
        raise ValueError(
            f"the {name} ({type(model).__name__}) is in training stage {stage!r}, where forward returns that "
            f"stage's output, not the full reward; call model.set_training_stage(None) before using it for RL, "
            "best-of-n or evaluation"
        )
    members = getattr(model, "members", None)
    if members is not None and isinstance(members, nn.ModuleList):
        for i, member in enumerate(members):
            check_reward_model_ready(member, name=f"{name} member {i}", for_ppo=for_ppo)
        return
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(
            f"the {name} ({type(model).__name__}) has no .config; TRL reward models must be PreTrainedModels "
            "(or a dmoerm_trl RewardEnsemble)"
        )
    num_labels = getattr(config, "num_labels", 1)
    if num_labels != 1:
        raise ValueError(
            f"the {name} ({type(model).__name__}) has config.num_labels={num_labels}; a reward model outputs one "
            "score per sequence. Load it with AutoModelForSequenceClassification.from_pretrained(path, num_labels=1) "
            "or use a model trained as a reward model"
        )
    if for_ppo:
        prefix = getattr(model, "base_model_prefix", None)
        if (
            not prefix
            or not isinstance(getattr(model, prefix, None), nn.Module)
            or not callable(getattr(model, "score", None))
        ):
            raise ValueError(
                f"the {name} ({type(model).__name__}) does not meet TRL PPO's reward contract: PPO calls "
                f"getattr(model, model.base_model_prefix)(...) and model.score(hidden_states), but this model has "
                f"base_model_prefix={prefix!r} and score={type(getattr(model, 'score', None)).__name__}. Decoder "
                "sequence classifiers (Llama, Qwen2, ...), DMoERM and RewardEnsemble meet it; for other models "
                "(e.g. BERT classifiers) use GRPO/RLOO, which re-tokenize text for the reward model"
            )


def check_reward_logits(logits: torch.Tensor, batch_size: int, name: str = "reward model") -> torch.Tensor:
    """Return ``(B,)`` rewards from a model's ``logits``; a clear error unless they are ``(B, 1)`` or ``(B,)``."""
    if not torch.is_tensor(logits):
        raise TypeError(f"the {name} returned logits of type {type(logits).__name__}, expected a tensor")
    if logits.dim() == 2 and logits.shape == (batch_size, 1):
        return logits[:, 0]
    if logits.dim() == 1 and logits.shape[0] == batch_size:
        return logits
    hint = ""
    if logits.dim() == 2 and logits.shape[0] == batch_size and logits.shape[1] > 1:
        hint = (
            f" ({logits.shape[1]} columns: a classifier with num_labels={logits.shape[1]}, or a DMoERM in its "
            "'router' stage; call model.set_training_stage(None))"
        )
    raise ValueError(
        f"the {name} returned logits of shape {tuple(logits.shape)} for a batch of {batch_size}; expected "
        f"({batch_size}, 1){hint}"
    )


def check_reward_values(values, batch_size: int, name: str = "reward function") -> torch.Tensor:
    """Return a float32 ``(B,)`` tensor from what a reward callable returned; a clear error on any other shape."""
    if torch.is_tensor(values):
        tensor = values.detach().float().cpu()
    else:
        try:
            tensor = torch.as_tensor(
                [float("nan") if v is None else v for v in values] if isinstance(values, (list, tuple)) else values,
                dtype=torch.float32,
            )
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"the {name} returned {type(values).__name__} that is not a list of numbers ({err}); it must return "
                f"one float per completion ({batch_size} here)"
            ) from None
    if tensor.dim() == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.dim() != 1 or tensor.shape[0] != batch_size:
        raise ValueError(
            f"the {name} returned shape {tuple(tensor.shape)} for {batch_size} completions; it must return one "
            f"float per completion, shape ({batch_size},)"
        )
    return tensor


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_tokenizers_match(
    policy_tokenizer, reward_tokenizer, probe_strings: Sequence[str] = PROBE_STRINGS, reward_name: str = "reward model"
) -> None:
    """Raise a ``ValueError`` if two tokenizers would give different ids (PPO passes token ids, not text).

    Compares vocabulary size, the pad/eos/bos ids and the encodings of ``probe_strings``; the error names the first
    difference and the fix.

    Example:
        >>> from dmoerm_trl.testing_utils import make_tiny_bert_tokenizer, make_tiny_tokenizer
        >>> check_tokenizers_match(make_tiny_tokenizer(), make_tiny_tokenizer())  # same tokenizer: no error
        >>> check_tokenizers_match(make_tiny_tokenizer(), make_tiny_bert_tokenizer())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: policy and reward model tokenizers differ: vocabulary sizes ...
    """
    fix = (
        f"TRL PPO feeds the policy's token ids to the {reward_name} without re-tokenizing, so both must use the same "
        f"tokenizer. Use a {reward_name} built on the policy's base model, or use GRPO/RLOO (`dmoerm grpo`), which "
        "decode and re-tokenize text for each reward model"
    )
    policy_size, reward_size = len(policy_tokenizer), len(reward_tokenizer)
    if policy_size != reward_size:
        raise ValueError(
            f"policy and {reward_name} tokenizers differ: vocabulary sizes {policy_size} vs {reward_size}. {fix}"
        )
    for attribute in ("pad_token_id", "eos_token_id", "bos_token_id"):
        policy_id, reward_id = getattr(policy_tokenizer, attribute, None), getattr(reward_tokenizer, attribute, None)
        if policy_id is not None and reward_id is not None and policy_id != reward_id:
            raise ValueError(
                f"policy and {reward_name} tokenizers differ: {attribute} {policy_id} vs {reward_id}. {fix}"
            )
    for probe in probe_strings:
        policy_ids, reward_ids = _encode(policy_tokenizer, probe), _encode(reward_tokenizer, probe)
        if policy_ids != reward_ids:
            raise ValueError(
                f"policy and {reward_name} tokenizers differ on the probe {probe!r}: policy ids {policy_ids[:12]}"
                f"{'...' if len(policy_ids) > 12 else ''} vs reward ids {reward_ids[:12]}"
                f"{'...' if len(reward_ids) > 12 else ''}. {fix}"
            )


def check_reward_model_vocab(policy_tokenizer, reward_model: nn.Module, reward_name: str = "reward model") -> None:
    """Without a reward tokenizer, at least check that every policy token id exists in the reward model's embedding."""
    embeddings = reward_model.get_input_embeddings() if hasattr(reward_model, "get_input_embeddings") else None
    if embeddings is None or not hasattr(embeddings, "num_embeddings"):
        return
    if len(policy_tokenizer) > embeddings.num_embeddings:
        raise ValueError(
            f"the policy tokenizer has {len(policy_tokenizer)} tokens but the {reward_name}'s embedding has only "
            f"{embeddings.num_embeddings} rows: the {reward_name} uses a different tokenizer. TRL PPO feeds the "
            "policy's token ids to the reward model; use GRPO/RLOO for reward models with their own tokenizer"
        )


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence ``model`` accepts (``max_position_embeddings`` or ``n_positions``), or None if unknown."""
    config = getattr(model, "config", None)
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompt_lengths(
    prompt_lengths: Sequence[int], max_new_tokens: int, limit: int | None, what: str = "policy"
) -> None:
    """Raise a ``ValueError`` naming the offending prompts if prompt + ``max_new_tokens`` tokens exceed ``limit``."""
    if limit is None:
        return
    too_long = [i for i, length in enumerate(prompt_lengths) if length + max_new_tokens > limit]
    if too_long:
        first = too_long[0]
        raise ValueError(
            f"{len(too_long)} prompt(s) are too long for the {what}: prompt {first} has {prompt_lengths[first]} "
            f"tokens + max_new_tokens={max_new_tokens} > {limit} positions (indices {too_long[:10]}"
            f"{'...' if len(too_long) > 10 else ''}). Shorten or drop these prompts, or lower max_new_tokens"
        )
