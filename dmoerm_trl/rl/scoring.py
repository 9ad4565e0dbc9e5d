"""One way to score ``(prompt, completion)`` pairs with any reward: a DMoERM, any Hugging Face sequence-classification
reward model, a :class:`~dmoerm_trl.rl.RewardEnsemble` (also one whose members have different tokenizers), or a
callable with TRL's reward-function signature ``f(prompts=..., completions=..., **kwargs) -> list[float]``.

Best-of-n, the gold-reward callback and the overoptimization evaluation all score through :class:`RewardScorer`.

Text is built the way TRL's ``RewardTrainer`` builds it when training a reward model: a conversational prompt (a
list of ``{"role", "content"}`` messages) gets the completion as an assistant turn and the tokenizer's chat template;
a text prompt is concatenated with the completion, EOS appended, and tokenized with special tokens.

Example:
    >>> from dmoerm_trl.rl import RewardScorer
    >>> scorer = RewardScorer(reward_model, tokenizer)                                # doctest: +SKIP
    >>> scorer(["What is 2+2?"], [" 4"])                                              # doctest: +SKIP
    tensor([0.1234])
    >>> scorer = RewardScorer(lambda prompts, completions, **kw: [len(c) for c in completions])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..truncation import encode_keep_end, keep_end, leading_special_tokens, warn_truncated
from .checks import check_reward_logits, check_reward_model_ready, check_reward_values, max_positions


def is_conversational_prompt(prompt) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


def completion_text(completion) -> str:
    """The text of a completion given as a string or as TRL's ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[0], dict):
        return "".join(str(m.get("content", "")) for m in completion)
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def build_reward_texts(tokenizer, prompts: Sequence, completions: Sequence, append_eos: bool = True) -> list[str]:
    """Full texts for a reward model: chat template for conversations, ``prompt + completion (+ EOS)`` for text."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions; pass one prompt per completion")
    texts = []
    for prompt, completion in zip(prompts, completions):
        answer = completion_text(completion)
        if is_conversational_prompt(prompt):
            if getattr(tokenizer, "chat_template", None) is None:
                raise ValueError(
                    f"the prompt is a conversation but the reward tokenizer ({type(tokenizer).__name__}) has no chat "
                    "template; set tokenizer.chat_template or pass text prompts"
                )
            messages = list(prompt) + [{"role": "assistant", "content": answer}]
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        elif isinstance(prompt, str):
            text = prompt + answer
            eos = getattr(tokenizer, "eos_token", None)
            if append_eos and eos and not text.endswith(eos):
                text += eos
            texts.append(text)
        else:
            raise TypeError(f"a prompt must be a string or a list of messages, got {type(prompt).__name__}")
    return texts


@contextmanager
def eval_mode(model: nn.Module):
    """Temporarily switch ``model`` to eval mode (dropout off), restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def callable_name(function) -> str:
    return getattr(function, "__name__", None) or type(function).__name__


class RewardScorer:
    """Score ``(prompt, completion)`` pairs with a reward model, an ensemble or a callable; returns ``(B,)`` float32.

    Args:
        reward: a ``PreTrainedModel`` returning ``logits`` ``(B, 1)`` (DMoERM, any HF sequence-classification reward
            model, a ``RewardEnsemble``), or a callable ``f(prompts=..., completions=..., **kwargs)`` returning one
            number per completion (TRL's reward-function signature), or another ``RewardScorer``.
        tokenizer: the reward model's tokenizer (not needed for callables, nor for an ensemble built with
            ``tokenizers=``).
        batch_size: texts per forward pass.
        max_length: longest tokenized text (default: the model's ``max_position_embeddings``); a longer text keeps
            its last ``max_length`` tokens (the completion survives), is counted in ``num_truncated`` (out of
            ``num_scored``) and logged.
        append_eos: append EOS to text (non-chat) inputs, as TRL's ``RewardTrainer`` does when training.
        name: used in error messages and CSV columns.
    """

    def __init__(
        self,
        reward,
        tokenizer=None,
        batch_size: int = 16,
        max_length: int | None = None,
        append_eos: bool = True,
        name: str | None = None,
    ):
        if isinstance(reward, RewardScorer):
            tokenizer = tokenizer or reward.tokenizer
            reward = reward.reward
        self.reward = reward
        self.tokenizer = tokenizer
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_truncated = 0  # texts longer than max_length, scored on their end
        self.num_scored = 0
        self.append_eos = append_eos
        self.is_model = isinstance(reward, nn.Module)
        self.member_scorers: list[RewardScorer] | None = None
        if self.is_model:
            self.name = name or _model_name(reward)
            check_reward_model_ready(reward, name=self.name)
            member_tokenizers = getattr(reward, "tokenizers", None)
            if tokenizer is None and member_tokenizers:
                # An ensemble whose members have their own tokenizers: score each member on text, then combine.
                self.member_scorers = [
                    RewardScorer(member, member_tokenizer, batch_size, None, append_eos, f"{self.name}[{i}]")
                    for i, (member, member_tokenizer) in enumerate(zip(reward.members, member_tokenizers))
                ]
            elif tokenizer is None:
                raise ValueError(
                    f"the reward model {self.name} needs its tokenizer: RewardScorer(model, tokenizer) "
                    "(or RewardEnsemble(..., tokenizers=[...]) for ensembles)"
                )
            elif tokenizer.pad_token_id is None:
                raise ValueError(
                    f"the tokenizer of {self.name} has no pad token; set tokenizer.pad_token = tokenizer.eos_token "
                    "(and model.config.pad_token_id) first"
                )
            self.max_length = max_length or max_positions(reward)
        elif callable(reward):
            self.name = name or callable_name(reward)
            self.max_length = None
        else:
            raise TypeError(f"a reward must be a reward model (nn.Module) or a callable, got {type(reward).__name__}")

    def __repr__(self) -> str:
        return f"RewardScorer({self.name})"

    @torch.no_grad()
    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> torch.Tensor:
        """Rewards ``(B,)`` (float32, CPU) for ``B`` prompt/completion pairs (one prompt per completion)."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"{self.name}: {len(prompts)} prompts but {len(completions)} completions; repeat each prompt once "
                "per completion"
            )
        if not self.is_model:
            completions = list(completions)
            if prompts and is_conversational_prompt(prompts[0]):  # TRL passes chat completions as message lists
                completions = [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in completions]
            values = self.reward(prompts=list(prompts), completions=completions, **kwargs)
            return check_reward_values(values, len(completions), name=f"reward function {self.name!r}")
        if self.member_scorers is not None:
            member_rewards = torch.stack([scorer(prompts, completions) for scorer in self.member_scorers], dim=-1)
            return self.reward.combine(member_rewards).float().cpu()
        texts = build_reward_texts(self.tokenizer, prompts, completions, append_eos=self.append_eos)
        conversational = bool(prompts) and is_conversational_prompt(prompts[0])
        # A DMoERM routes on the prompt only: a text prompt's end is known here (a chat template marks it itself).
        prompt_lengths = None if conversational else [len(prompt) for prompt in prompts]
        return self.score_texts(texts, conversational=conversational, prompt_lengths=prompt_lengths)

    @torch.no_grad()
    def score_texts(
        self, texts: Sequence[str], conversational: bool = False, prompt_lengths: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Rewards ``(B,)`` for already formatted full texts (chat template applied for conversations).

        ``prompt_lengths`` (characters of each text that are prompt) tells a DMoERM's router where the prompt of a
        plain text ends (a fast tokenizer's offsets give the tokens); chat-templated texts do not need it."""
        model, tokenizer = self.reward, self.tokenizer
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # as TRL's GRPO/RLOO do for reward models
        device = _device_of(model)
        results = []
        with eval_mode(model):
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start : start + self.batch_size])
                # Chat templates already contain the special tokens; plain text gets them like in RewardTrainer.
                # Over-long texts keep their end (the completion); flagged and counted (dmoerm_trl.truncation).
                prompt_counts = None
                if prompt_lengths is not None and _routes_on_prompt(model, tokenizer):
                    limits = prompt_lengths[start : start + self.batch_size]
                    encoded, truncated, prompt_counts = _encode_with_prompt_counts(
                        tokenizer, chunk, limits, self.max_length, not conversational
                    )
                else:
                    encoded, truncated = encode_keep_end(tokenizer, chunk, self.max_length, not conversational)
                self.num_truncated += sum(truncated)
                self.num_scored += len(chunk)
                warn_truncated(self.name, sum(truncated), len(chunk), self.max_length)
                batch = tokenizer.pad({"input_ids": encoded}, padding=True, padding_side="right", return_tensors="pt")
                if prompt_counts is not None:
                    # A DMoERM's router reads the prompt only: the first prompt_counts[i] tokens of row i.
                    positions = torch.arange(batch["input_ids"].shape[1]).unsqueeze(0)
                    batch["prompt_mask"] = (positions < torch.tensor(prompt_counts).unsqueeze(1)).long()
                wanted = ("input_ids", "attention_mask", "prompt_mask")
                batch = {k: v.to(device) for k, v in batch.items() if k in wanted}
                output = model(**batch)
                logits = output.logits if hasattr(output, "logits") else output
                results.append(check_reward_logits(logits, len(chunk), name=self.name).float().cpu())
        return torch.cat(results) if results else torch.zeros(0)

    def as_reward_function(self) -> Callable:
        """A TRL reward function ``f(prompts, completions, **kwargs) -> list[float]`` (for GRPO/RLOO ``reward_funcs``).

        Use it for rewards TRL cannot call directly, e.g. an ensemble whose members have different tokenizers.
        """
        scorer = self

        def reward_function(prompts, completions, **kwargs) -> list[float]:
            return scorer(prompts, completions).tolist()

        reward_function.__name__ = self.name.replace("/", "_")
        return reward_function


def _encode_with_prompt_counts(tokenizer, texts, prompt_lengths, max_length, add_special_tokens):
    """``(ids, truncated flags, prompt token counts)``: like ``encode_keep_end``, and how many of each row's kept
    tokens are prompt (the tokens before the first one that starts at or after the prompt's last character; leading
    special tokens count as prompt). A prompt truncated away entirely counts 0 (the model then names the row)."""
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens, return_offsets_mapping=True, verbose=False)
    ids_out, flags, counts = [], [], []
    for ids, offsets, limit in zip(encoded["input_ids"], encoded["offset_mapping"], prompt_lengths):
        count = next((i for i, (begin, end) in enumerate(offsets) if limit <= begin < end), len(ids))
        too_long = max_length is not None and len(ids) > max_length
        if too_long:
            leading = leading_special_tokens(tokenizer, ids, add_special_tokens)
            kept = keep_end(ids, max_length, leading)
            count -= len(ids) - len(kept)
            count = count if count > leading else 0
            ids = kept
        ids_out.append(list(ids))
        flags.append(too_long)
        counts.append(max(count, 0))
    return ids_out, flags, counts


def _routes_on_prompt(model: nn.Module, tokenizer) -> bool:
    """A DMoERM, or an ensemble with one (its router reads the prompt only), scored with a fast tokenizer (which
    gives character offsets)."""
    models = [model, *getattr(model, "members", [])]
    has_dmoerm = any(getattr(getattr(m, "config", None), "model_type", None) == "dmoerm" for m in models)
    return has_dmoerm and getattr(tokenizer, "is_fast", False)


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    path = getattr(config, "_name_or_path", "") or ""
    return path.rstrip("/").split("/")[-1] or type(model).__name__
