"""Track reward overoptimization during RL: proxy reward, gold reward and KL(policy || reference) every m steps.

:class:`GoldRewardCallback` is a ``transformers.TrainerCallback`` for TRL's PPO, GRPO and RLOO trainers (and any
``Trainer`` training a causal LM). At the start of training and every ``eval_steps`` steps it samples the current
policy on held-out prompts, scores the samples with the proxy reward (the reward being optimized) and a gold reward
(a stronger or held-out reward model, or any callable), and estimates ``KL(policy || reference)`` from log-probs:
the mean over samples ``y ~ policy`` of ``sum_t KL(pi(. | y_<t) || pi_ref(. | y_<t))`` over the response tokens,
i.e. the exact per-token KL of the next-token distributions along the sampled responses. By the chain rule this is
an unbiased estimate of the sequence-level KL, like the k1 estimator ``sum_t log pi(y_t) - log pi_ref(y_t)``, but it
is never negative and far less noisy (k1 is kept in ``records`` as ``kl_k1``).

Results go to ``<output_dir>/overoptimization.csv`` (rewritten atomically after every evaluation), to ``state.log_history`` (so ``trainer_state.json`` has them) and, at the end of training, to
``overoptimization.png``: gold and proxy reward against ``sqrt(KL)`` with Gao et al.'s RL form
``d (alpha - beta log d)`` fitted by least squares (coefficients in ``overoptimization_fits.json``).

The reference is ``ref_model`` if given; for a PEFT policy, the policy with its adapters disabled; otherwise a
frozen copy of the policy taken at the start of training (costs one more copy of the policy in memory). Sampling
and scoring run on the main process only; with DeepSpeed ZeRO-3 (sharded policy) pass ``ref_model`` and expect the
callback to be unsupported.

Example:
    >>> from dmoerm_trl.rl import GoldRewardCallback
    >>> callback = GoldRewardCallback(heldout_prompts, gold=(gold_rm, gold_tok), proxy=(proxy_rm, proxy_tok),  # doctest: +SKIP
    ...                               eval_steps=10)
    >>> trainer = GRPOTrainer(..., callbacks=[callback]); trainer.train()                 # doctest: +SKIP
    >>> callback.records[-1]   # {'step': 100, 'kl': 2.3, ...}                        # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationConfig, TrainerCallback

from ..utils.io import atomic_write_text
from .best_of_n import _as_scorer
from .checks import check_prompt_lengths, max_positions
from .overoptimization import CSV_NAME, fit_records, plot_overoptimization, read_records_csv, write_records_csv
from .scoring import eval_mode, is_conversational_prompt

logger = logging.getLogger(__name__)


def unwrap_policy(model: nn.Module) -> nn.Module:
    """The policy inside what a trainer hands to callbacks (DDP/DeepSpeed wrappers, TRL PPO's policy+value wrapper)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    policy = getattr(model, "policy", None)
    return policy if isinstance(policy, nn.Module) else model


def _first_eos_mask(tokens: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """``(B, T)`` mask of generated tokens up to and including the first EOS (everything if no EOS)."""
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for eos in eos_token_ids:
        is_eos |= tokens == eos
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return ~after_eos


def _response_logits(model, sequences, attention_mask, prompt_length: int, temperature: float) -> torch.Tensor:
    position_ids = (attention_mask.cumsum(1) - attention_mask).clamp(min=0)
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids).logits
    return logits[:, prompt_length - 1 : -1].float() / temperature


def response_logprobs(model, sequences, attention_mask, prompt_length: int, temperature: float = 1.0) -> torch.Tensor:
    """``(B, T_response, V)`` next-token log-probabilities of ``model`` at the response positions."""
    with torch.no_grad():
        return torch.log_softmax(_response_logits(model, sequences, attention_mask, prompt_length, temperature), -1)


def kl_from_logprobs(policy_logp, reference_logp, sequences, prompt_length: int, response_mask):
    """``(full, k1)`` per-sample KL estimates from both models' response log-probabilities (see :func:`sequence_kl`)."""
    mask = response_mask.float()
    full = ((policy_logp.exp() * (policy_logp - reference_logp)).sum(-1) * mask).sum(-1)
    response = sequences[:, prompt_length:].unsqueeze(-1)
    k1 = ((policy_logp.gather(-1, response) - reference_logp.gather(-1, response)).squeeze(-1) * mask).sum(-1)
    return full, k1


def sequence_kl(
    policy: nn.Module,
    reference: nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample estimates of ``KL(policy || reference)`` over the response tokens of ``sequences`` (sampled from
    ``policy``): ``(full, k1)``.

    ``full`` sums, over response positions, the exact KL between the two next-token distributions given the sampled
    prefix; its mean over samples is an unbiased estimate of the sequence-level KL (chain rule), never negative and
    of much lower variance than ``k1``, the summed log-ratio ``log pi(y_t) - log pi_ref(y_t)`` of the sampled tokens.
    """
    policy_logp = response_logprobs(policy, sequences, attention_mask, prompt_length, temperature)
    reference_logp = response_logprobs(reference, sequences, attention_mask, prompt_length, temperature)
    return kl_from_logprobs(policy_logp, reference_logp, sequences, prompt_length, response_mask)


class GoldRewardCallback(TrainerCallback):
    """Every ``eval_steps`` steps: sample the policy on held-out prompts; log proxy reward, gold reward and KL.

    Args:
        prompts: held-out prompts (strings, or lists of ``{"role", "content"}`` messages).
        gold: the gold reward: ``(model, tokenizer)``, a :class:`~dmoerm_trl.rl.RewardScorer` or a callable.
        proxy: the proxy (the reward RL optimizes), same forms as ``gold``.
        tokenizer: the policy tokenizer (default: the trainer's ``processing_class``).
        ref_model: the reference policy for the KL (default: PEFT adapters disabled, else a frozen copy).
        eval_steps: evaluate every this many optimizer steps (and at step 0 and at the end).
        samples_per_prompt: completions sampled per prompt at each evaluation.
        generation_config: sampling settings (default: temperature 1, ``max_new_tokens=32``); the KL is the one
            between the policy and reference distributions at this temperature.
        batch_size: prompts per ``generate`` call.
        output_dir: where the CSV/PNG/JSON go (default: the trainer's ``output_dir``).
        plot: write ``overoptimization.png`` and the fits at the end of training.
        proxy_name: the ``proxy`` column in the CSV.
        seed: seeds sampling at each evaluation (the same prompts' noise at every step).
    """

    def __init__(
        self,
        prompts: Sequence,
        gold,
        proxy,
        tokenizer=None,
        ref_model: nn.Module | None = None,
        eval_steps: int = 10,
        samples_per_prompt: int = 2,
        generation_config: GenerationConfig | None = None,
        batch_size: int = 8,
        output_dir: str | os.PathLike | None = None,
        plot: bool = True,
        proxy_name: str | None = None,
        seed: int | None = 0,
    ):
        if eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1, got {eval_steps}")
        if not prompts:
            raise ValueError("GoldRewardCallback needs at least one held-out prompt")
        self.prompts = list(prompts)
        self.gold = _as_scorer(gold, name="gold")
        self.proxy = _as_scorer(proxy, name=proxy_name)
        self.proxy_name = proxy_name or self.proxy.name
        self.tokenizer = tokenizer
        self.ref_model = ref_model
        self.eval_steps = eval_steps
        self.samples_per_prompt = samples_per_prompt
        self.generation_config = generation_config or GenerationConfig(
            max_new_tokens=32, do_sample=True, temperature=1.0, top_k=0, top_p=1.0
        )
        if not self.generation_config.do_sample:
            raise ValueError("the KL estimate needs samples from the policy: generation_config.do_sample must be True")
        self.batch_size = batch_size
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.plot = plot
        self.seed = seed
        self.records: list[dict] = []
        self.fits = None
        self._own_ref: nn.Module | None = None
        self._last_step: int | None = None

    # ------------------------------------------------------------------------------------------ reference
    def _setup_reference(self, policy: nn.Module) -> None:
        if self.ref_model is not None or self._own_ref is not None or _is_peft(policy):
            return
        self._own_ref = copy.deepcopy(policy).eval()
        self._own_ref.requires_grad_(False)
        # Trainers may patch ``forward`` per instance with closures over the *original* module (trl 1.16's fused
        # loss wraps ``model.forward``); a deep copy keeps such a closure and would run the live policy. Restore the
        # class forward on the frozen copy.
        for module in self._own_ref.modules():
            module.__dict__.pop("forward", None)

    @contextmanager
    def _reference(self, policy: nn.Module):
        if self.ref_model is not None:
            yield self.ref_model
        elif self._own_ref is not None:
            yield self._own_ref
        else:  # PEFT policy: the base model without adapters is the reference
            with policy.disable_adapter():
                yield policy

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, policy: nn.Module, tokenizer, step: int) -> dict:
        """Sample, score and estimate the KL once; returns (and records) the CSV row for ``step``."""
        config = copy.deepcopy(self.generation_config)
        config.num_return_sequences = self.samples_per_prompt
        config.pad_token_id = tokenizer.pad_token_id if config.pad_token_id is None else config.pad_token_id
        eos_ids = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
        eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
        config.eos_token_id = eos_ids or None
        temperature = config.temperature or 1.0
        conversational = is_conversational_prompt(self.prompts[0])
        texts = (
            [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in self.prompts]
            if conversational
            else self.prompts
        )
        encoded = tokenizer(texts, add_special_tokens=not conversational)["input_ids"]
        check_prompt_lengths([len(x) for x in encoded], config.max_new_tokens, max_positions(policy))
        device = next(policy.parameters()).device
        kls, kls_k1, completions, prompts = [], [], [], []
        rng_state = torch.get_rng_state()
        if self.seed is not None:
            torch.manual_seed(self.seed + step)
        try:
            with eval_mode(policy):
                for start in range(0, len(encoded), self.batch_size):
                    chunk = encoded[start : start + self.batch_size]
                    batch = tokenizer.pad({"input_ids": chunk}, padding=True, padding_side="left", return_tensors="pt")
                    batch = {k: v.to(device) for k, v in batch.items()}
                    sequences = policy.generate(**batch, generation_config=config)
                    prompt_length = batch["input_ids"].shape[1]
                    response = sequences[:, prompt_length:]
                    response_mask = _first_eos_mask(response, eos_ids).long()
                    prompt_mask = batch["attention_mask"].repeat_interleave(self.samples_per_prompt, dim=0)
                    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
                    policy_logp = response_logprobs(policy, sequences, attention_mask, prompt_length, temperature)
                    # The policy's log-probs first: for a PEFT policy the reference is the same module with its
                    # adapters disabled inside this context.
                    with self._reference(policy) as reference, eval_mode(reference):
                        reference_logp = response_logprobs(
                            reference, sequences, attention_mask, prompt_length, temperature
                        )
                    full, k1 = kl_from_logprobs(policy_logp, reference_logp, sequences, prompt_length, response_mask)
                    kls.append(full.cpu())
                    kls_k1.append(k1.cpu())
                    masked = response.masked_fill(response_mask == 0, tokenizer.pad_token_id)
                    completions += tokenizer.batch_decode(masked, skip_special_tokens=True)
                    prompts += [
                        p
                        for p in self.prompts[start : start + self.batch_size]
                        for _ in range(config.num_return_sequences)
                    ]
        finally:
            torch.set_rng_state(rng_state)  # do not disturb the trainer's sampling
        kl = float(torch.cat(kls).mean())
        gold_scores = self.gold(prompts, completions)
        proxy_scores = self.proxy(prompts, completions)
        record = {
            "source": "rl",
            "proxy": self.proxy_name,
            "n": None,
            "step": int(step),
            "kl": kl,
            "sqrt_kl": math.sqrt(max(kl, 0.0)),
            "proxy_reward": float(proxy_scores.mean()),
            "gold_reward": float(gold_scores.mean()),
            "num_samples": len(completions),
            "kl_k1": float(torch.cat(kls_k1).mean()),
        }
        self.records.append(record)
        self._last_step = step
        return record

    def _run(self, args, state, model, processing_class) -> None:
        if not state.is_world_process_zero or model is None:
            return
        tokenizer = self.tokenizer or processing_class
        if tokenizer is None:
            raise ValueError("GoldRewardCallback needs the policy tokenizer: pass tokenizer=")
        policy = unwrap_policy(model)
        record = self.evaluate(policy, tokenizer, state.global_step)
        state.log_history.append(
            {
                "gold/reward": record["gold_reward"],
                "gold/proxy_reward": record["proxy_reward"],
                "gold/kl": record["kl"],
                "step": state.global_step,
            }
        )
        logger.info(
            "step %d: gold %.4f, proxy %.4f, KL %.4f",
            state.global_step,
            record["gold_reward"],
            record["proxy_reward"],
            record["kl"],
        )
        write_records_csv(self.records, self._output_dir(args) / CSV_NAME)

    def _output_dir(self, args) -> Path:
        return self.output_dir if self.output_dir is not None else Path(args.output_dir)

    # ------------------------------------------------------------------------------------------ hooks
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        self._setup_reference(unwrap_policy(model))
        csv_path = self._output_dir(args) / CSV_NAME
        if state.global_step > 0 and csv_path.is_file():  # resumed run: keep the evaluations made before
            self.records = [
                r for r in read_records_csv(csv_path) if r["step"] is not None and r["step"] <= state.global_step
            ]
            self._last_step = max((r["step"] for r in self.records), default=None)
        if self._last_step != state.global_step:
            self._run(args, state, model, processing_class)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.eval_steps == 0 and self._last_step != state.global_step:
            self._run(args, state, model, processing_class)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._last_step != state.global_step:
            self._run(args, state, model, processing_class)
        self._own_ref = None  # free the reference copy
        if self.plot and len(self.records) >= 3:
            output_dir = self._output_dir(args)
            try:
                self.fits = plot_overoptimization(
                    self.records,
                    output_dir / "overoptimization.png",
                    title=f"Overoptimization during RL (proxy: {self.proxy_name})",
                )
            except ImportError as err:  # no matplotlib: keep the CSV and the fits, report the missing plot
                logger.warning("%s; overoptimization.png not written", err)
                self.fits = fit_records(self.records)
            fits = json.dumps([f.summary() for f in self.fits], indent=2)
            atomic_write_text(output_dir / "overoptimization_fits.json", fits)


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)
