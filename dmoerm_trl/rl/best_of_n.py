"""Best-of-n sampling (rejection sampling) with any reward, and the best-of-n overoptimization evaluation.

:class:`BestOfNSampler` draws ``n`` candidates per prompt from a Hugging Face causal LM in batched generation
(``GenerationConfig``, ``num_return_sequences=n``), scores them with any reward (a DMoERM, any HF
sequence-classification reward model, a :class:`~dmoerm_trl.rl.RewardEnsemble`, a callable) and returns the best
candidate (or the top-k) with its score. TRL removed its own ``BestOfNSampler``; this one replaces it.

:meth:`BestOfNSampler.evaluate` draws ``N`` samples per prompt once, scores them with one or more proxies and a gold
reward, and for every ``n <= N`` computes the expected proxy and gold reward of the best-of-n choice (picked by the
proxy) with the unbiased estimator of Nakano et al. (2021) used by Gao et al. (2022): with the ``N`` samples sorted
by proxy reward, the ``i``-th smallest (1-based) is the best of a uniformly drawn ``n``-subset with probability
``C(i-1, n-1) / C(N, n)``. KL of best-of-n from the sampling policy: ``log n - (n-1)/n``. For a report,
:func:`best_of_n_curves` gives the per-proxy curves and :func:`best_of_n_gains` the per-prompt gold gains (a prompt
with NaN gold has a NaN gain, counted by :func:`nan_gold_counts`).

Example:
    >>> from transformers import GenerationConfig
    >>> from dmoerm_trl.rl import BestOfNSampler
    >>> sampler = BestOfNSampler(policy, policy_tokenizer, reward_model, reward_tokenizer, n=8,   # doctest: +SKIP
    ...                          generation_config=GenerationConfig(max_new_tokens=64, do_sample=True))
    >>> out = sampler(["Write a haiku about the sea."], top_k=2)                                # doctest: +SKIP
    >>> out.completions[0], out.scores[0]          # the 2 best of 8, best first                # doctest: +SKIP
    >>> result = sampler.evaluate(prompts, gold=(gold_model, gold_tokenizer), n=16)            # doctest: +SKIP
    >>> result.records[-1]     # {'n': 16, 'kl': 1.83, 'proxy_reward': ..., 'gold_reward': ...}  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .checks import check_prompt_lengths, max_positions
from .overoptimization import bon_kl, write_records_csv
from .scoring import RewardScorer, eval_mode, is_conversational_prompt


# -------------------------------------------------------------------------------------------- the estimator
def best_of_n_weights(num_samples: int, n: int) -> torch.Tensor:
    """``(N,)`` probabilities that the ``i``-th smallest of ``N`` samples is the max of a uniform ``n``-subset."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n > num_samples:
        raise ValueError(
            f"best-of-{n} needs at least {n} samples per prompt, but only N={num_samples} were drawn; draw more "
            f"samples (n/N >= {n}) or evaluate n <= {num_samples}"
        )
    i = torch.arange(1, num_samples + 1, dtype=torch.float64)
    valid = i >= n
    # log C(i-1, n-1) - log C(N, n), with lgamma for large N
    log_weight = (
        torch.lgamma(i)
        - math.lgamma(n)
        - torch.lgamma((i - n + 1).clamp(min=1))
        - (math.lgamma(num_samples + 1) - math.lgamma(n + 1) - math.lgamma(num_samples - n + 1))
    )
    return torch.where(valid, log_weight.exp(), torch.zeros_like(log_weight))


def expected_best_of_n(proxy: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased estimate, per prompt, of ``E[values of the best-of-n choice by proxy]`` from ``N`` samples.

    Args:
        proxy: ``(P, N)`` proxy rewards (the selection criterion).
        values: ``(P, N)`` what to average (the gold reward, or the proxy itself).
        n: subset size, ``1 <= n <= N``.

    Ties in the proxy are broken uniformly at random (tied samples' values are averaged), so the estimate does not
    depend on the order of the samples.
    """
    proxy, values = torch.as_tensor(proxy, dtype=torch.float64), torch.as_tensor(values, dtype=torch.float64)
    if proxy.dim() == 1:
        proxy, values = proxy.unsqueeze(0), values.unsqueeze(0)
    if proxy.shape != values.shape:
        raise ValueError(
            f"proxy {tuple(proxy.shape)} and values {tuple(values.shape)} must have the same shape (P, N)"
        )
    weights = best_of_n_weights(proxy.shape[1], n)
    order = proxy.argsort(dim=1, stable=True)
    sorted_proxy = proxy.gather(1, order)
    sorted_values = values.gather(1, order)
    # Average values within groups of equal proxy (uniform tie-breaking).
    if (sorted_proxy[:, 1:] == sorted_proxy[:, :-1]).any():
        for row in range(sorted_proxy.shape[0]):
            unique, inverse = torch.unique_consecutive(sorted_proxy[row], return_inverse=True)
            if len(unique) < sorted_proxy.shape[1]:
                sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, sorted_values[row])
                counts = torch.zeros(len(unique), dtype=torch.float64).index_add_(
                    0, inverse, torch.ones_like(sorted_values[row])
                )
                sorted_values[row] = (sums / counts)[inverse]
    return sorted_values @ weights


def best_of_n_curve(
    proxy_scores: torch.Tensor, gold_scores: torch.Tensor, ns: Sequence[int] | None = None, proxy_name: str = "proxy"
) -> list[dict]:
    """Records (one per ``n``) of the expected proxy and gold reward of best-of-n, averaged over prompts.

    ``ns`` defaults to the powers of two up to ``N`` (and ``N`` itself). Each record has the overoptimization CSV
    columns: ``source="bon"``, ``proxy``, ``n``, ``kl = log n - (n-1)/n``, ``sqrt_kl``, ``proxy_reward``,
    ``gold_reward``, ``num_samples`` (prompts), plus ``proxy_sem``/``gold_sem`` (standard errors over prompts).
    """
    proxy_scores = torch.as_tensor(proxy_scores, dtype=torch.float64)
    gold_scores = torch.as_tensor(gold_scores, dtype=torch.float64)
    if proxy_scores.shape != gold_scores.shape or proxy_scores.dim() != 2:
        raise ValueError(
            f"proxy and gold scores must both be (num_prompts, N); got {tuple(proxy_scores.shape)} and "
            f"{tuple(gold_scores.shape)}"
        )
    num_prompts, num_samples = proxy_scores.shape
    if ns is None:
        ns = sorted({2**k for k in range(int(math.log2(num_samples)) + 1)} | {num_samples})
    records = []
    for n in ns:
        proxy_per_prompt = expected_best_of_n(proxy_scores, proxy_scores, n)
        gold_per_prompt = expected_best_of_n(proxy_scores, gold_scores, n)
        kl = bon_kl(n)
        sem = lambda x: float(x.std(unbiased=True) / math.sqrt(num_prompts)) if num_prompts > 1 else 0.0
        records.append(
            {
                "source": "bon",
                "proxy": proxy_name,
                "n": int(n),
                "step": None,
                "kl": kl,
                "sqrt_kl": math.sqrt(kl),
                "proxy_reward": float(proxy_per_prompt.mean()),
                "gold_reward": float(gold_per_prompt.mean()),
                "num_samples": num_prompts,
                "proxy_sem": sem(proxy_per_prompt),
                "gold_sem": sem(gold_per_prompt),
            }
        )
    return records


# ------------------------------------------------------------------------------- curves and gains for a report
def best_of_n_curves(records: Sequence[dict], decimals: int = 4) -> dict[str, dict[int, dict]]:
    """The best-of-n records (``evaluate().records``) as ``{proxy: {n: {"sqrt_kl", "gold", "gold_sem", "proxy"}}}``.

    Values are rounded to ``decimals``; RL records (``source="rl"``) are left out. Where a prompt's gold is NaN the
    records' gold means are NaN, and so are the curves (see :func:`best_of_n_gains`).

    Example:
        >>> import torch
        >>> from dmoerm_trl.rl import best_of_n_curve, best_of_n_curves
        >>> records = best_of_n_curve(torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 4.0]]), proxy_name="rm")
        >>> best_of_n_curves(records)["rm"][2]
        {'sqrt_kl': 0.4395, 'gold': 4.0, 'gold_sem': 0.0, 'proxy': 1.0}
    """
    curves: dict[str, dict[int, dict]] = {}
    for record in records:
        if record.get("source", "bon") != "bon":
            continue
        curves.setdefault(record["proxy"], {})[int(record["n"])] = {
            "sqrt_kl": round(record["sqrt_kl"], decimals),
            "gold": round(record["gold_reward"], decimals),
            "gold_sem": round(record["gold_sem"], decimals),
            "proxy": round(record["proxy_reward"], decimals),
        }
    return curves


def nan_gold_counts(gold_scores: torch.Tensor) -> dict[str, int]:
    """``{"nan_gold": samples, "nan_gold_prompts": prompts}`` whose gold score is NaN (a ``(P, N)`` tensor).

    Example:
        >>> import torch
        >>> from dmoerm_trl.rl import nan_gold_counts
        >>> nan_gold_counts(torch.tensor([[1.0, float("nan")], [2.0, 3.0]]))
        {'nan_gold': 1, 'nan_gold_prompts': 1}
    """
    nan = torch.isnan(torch.as_tensor(gold_scores, dtype=torch.float64))
    return {"nan_gold": int(nan.sum()), "nan_gold_prompts": int(nan.any(dim=-1).sum())}


def best_of_n_gain(proxy: torch.Tensor, gold: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """``(P,)`` best-of-n gold gain per prompt: the expected gold of the proxy's best-of-``n`` pick (unbiased
    estimator over the prompt's ``N`` samples, :func:`expected_best_of_n`) minus the mean gold of those ``N`` samples
    (the expected gold of one sample, ``n = 1``). ``n`` defaults to ``N``.

    NaN: a prompt with any NaN gold score (or any NaN proxy score) gets a NaN gain. The estimator weighs every
    sample, so such a prompt has no estimate; its gain is not made up from its other samples, and the baseline is the
    plain mean over the same ``N`` samples as the estimator. Callers leave NaN gains out of means and report how many
    prompts they left out (:func:`nan_gold_counts`).

    Example:
        >>> import torch
        >>> from dmoerm_trl.rl import best_of_n_gain
        >>> best_of_n_gain(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([[2.0, 4.0], [1.0, float("nan")]]))
        tensor([1., nan], dtype=torch.float64)
    """
    proxy, gold = torch.as_tensor(proxy, dtype=torch.float64), torch.as_tensor(gold, dtype=torch.float64)
    if gold.dim() != 2 or proxy.shape != gold.shape:
        raise ValueError(
            f"proxy and gold scores must both be (num_prompts, N); got {tuple(proxy.shape)} and {tuple(gold.shape)}"
        )
    gain = expected_best_of_n(proxy, gold, gold.shape[1] if n is None else n) - gold.mean(dim=1)
    # NaN gold makes the row's estimate NaN already (weight 0 x NaN); a NaN proxy would rank as the best sample.
    return gain.masked_fill(torch.isnan(gold).any(dim=1) | torch.isnan(proxy).any(dim=1), math.nan)


def best_of_n_gains(result: BestOfNEvaluation, n: int | None = None, decimals: int | None = None) -> dict[str, list]:
    """Per-prompt best-of-n gold gain of every proxy of ``result`` (:meth:`BestOfNSampler.evaluate`'s output):
    ``{proxy: [gain of prompt 0, ...]}`` (see :func:`best_of_n_gain`, which also says what NaN gold gives: a NaN gain,
    kept in the list so index ``i`` stays prompt ``i``; count them with ``nan_gold_counts(result.gold_scores)``).

    Paired comparisons of two proxies are over the same prompts: the gains of prompt ``i`` come from the same ``N``
    samples. ``decimals`` rounds the values (``None``: full precision).

    Example:
        >>> import torch
        >>> from dmoerm_trl.rl import BestOfNEvaluation, best_of_n_gains
        >>> result = BestOfNEvaluation([], torch.tensor([[2.0, 4.0]]), {"rm": torch.tensor([[0.0, 1.0]])})
        >>> best_of_n_gains(result)
        {'rm': [1.0]}
    """
    gains = {}
    for name, scores in result.proxy_scores.items():
        values = best_of_n_gain(scores, result.gold_scores, n).tolist()
        gains[name] = values if decimals is None else [round(v, decimals) for v in values]
    return gains


# ---------------------------------------------------------------------------------------------- the sampler
@dataclass
class BestOfNOutput:
    """What :class:`BestOfNSampler` returns.

    ``completions[i]`` / ``scores[i]``: the ``top_k`` best candidates of prompt ``i`` and their rewards, best first.
    ``candidates[i]``: all ``n`` candidates of prompt ``i`` in generation order; ``candidate_scores``: ``(P, n)``.
    """

    prompts: list
    completions: list[list[str]]
    scores: list[list[float]]
    candidates: list[list[str]]
    candidate_scores: torch.Tensor

    @property
    def best(self) -> list[str]:
        return [c[0] for c in self.completions]


@dataclass
class BestOfNEvaluation:
    """What :meth:`BestOfNSampler.evaluate` returns: CSV records per proxy and the raw ``(P, N)`` scores."""

    records: list[dict]
    gold_scores: torch.Tensor
    proxy_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    candidates: list[list[str]] = field(default_factory=list)

    def to_csv(self, path) -> None:
        write_records_csv(self.records, path)


def _as_scorer(reward, tokenizer=None, name: str | None = None, batch_size: int = 16) -> RewardScorer:
    """Accept a RewardScorer, a (model, tokenizer) pair, a model + tokenizer, or a callable."""
    if isinstance(reward, RewardScorer):
        return reward
    if isinstance(reward, tuple) and len(reward) == 2 and isinstance(reward[0], nn.Module):
        reward, tokenizer = reward
    return RewardScorer(reward, tokenizer, batch_size=batch_size, name=name)


class BestOfNSampler:
    """Draw ``n`` candidates per prompt from a causal LM and keep the best by a reward.

    Args:
        model: a Hugging Face causal LM (the policy).
        tokenizer: the policy's tokenizer (needs a pad token; a chat template for conversational prompts).
        reward: the reward: a reward model (with ``reward_tokenizer``), a ``RewardEnsemble``, a
            :class:`RewardScorer`, or a callable ``f(prompts=..., completions=...) -> list[float]``.
        reward_tokenizer: the reward model's tokenizer (may differ from the policy's: text is re-tokenized).
        n: candidates per prompt.
        generation_config: sampling settings (``do_sample=True`` is required when ``n > 1``); default: sampling
            at temperature 1 with ``max_new_tokens=64``.
        batch_size: prompts per ``generate`` call (each generates ``n`` sequences).
        reward_batch_size: texts per reward forward pass.
        seed: seeds torch's RNG at the start of each call (reproducible samples).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        reward,
        reward_tokenizer=None,
        n: int = 4,
        generation_config: GenerationConfig | None = None,
        batch_size: int = 8,
        reward_batch_size: int = 16,
        seed: int | None = None,
        show_progress: bool = True,
    ):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the policy tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token")
        self.model = model
        self.tokenizer = tokenizer
        self.scorer = _as_scorer(reward, reward_tokenizer, batch_size=reward_batch_size)
        self.n = n
        self.generation_config = generation_config or GenerationConfig(
            max_new_tokens=64, do_sample=True, temperature=1.0, top_k=0, top_p=1.0
        )
        self.batch_size = batch_size
        self.reward_batch_size = reward_batch_size
        self.seed = seed
        self.show_progress = show_progress

    # ----------------------------------------------------------------------------------------- generation
    def _prompt_texts(self, prompts: Sequence) -> tuple[list[str], bool]:
        conversational = [is_conversational_prompt(p) for p in prompts]
        if any(conversational) and not all(conversational):
            raise ValueError("prompts mix conversations and plain strings; pass one kind")
        if conversational and conversational[0]:
            if getattr(self.tokenizer, "chat_template", None) is None:
                raise ValueError("conversational prompts need a policy tokenizer with a chat template")
            return [
                self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts
            ], True
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompt {i} is a {type(prompt).__name__}; pass strings or lists of messages")
        return list(prompts), False

    def _encode_prompts(self, prompts: Sequence, max_new_tokens: int):
        texts, conversational = self._prompt_texts(prompts)
        encoded = self.tokenizer(texts, add_special_tokens=not conversational)["input_ids"]
        check_prompt_lengths([len(ids) for ids in encoded], max_new_tokens, max_positions(self.model))
        return encoded

    @torch.no_grad()
    def generate(self, prompts: Sequence, n: int | None = None) -> list[list[str]]:
        """``n`` sampled completions (text, special tokens removed) for each prompt."""
        n = n or self.n
        config = copy.deepcopy(self.generation_config)
        if n > 1 and not config.do_sample:
            raise ValueError("best-of-n with n > 1 needs sampling: set generation_config.do_sample=True")
        max_new_tokens = config.max_new_tokens or 64
        config.max_new_tokens = max_new_tokens
        config.num_return_sequences = n
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        if config.eos_token_id is None and self.tokenizer.eos_token_id is not None:
            config.eos_token_id = self.tokenizer.eos_token_id
        encoded = self._encode_prompts(prompts, max_new_tokens)
        if self.seed is not None:
            torch.manual_seed(self.seed)
        device = next(self.model.parameters()).device
        candidates: list[list[str]] = []
        steps = range(0, len(encoded), self.batch_size)
        with eval_mode(self.model):
            for start in tqdm(steps, desc=f"best-of-{n}: sampling", disable=not self.show_progress or len(steps) < 2):
                chunk = encoded[start : start + self.batch_size]
                batch = self.tokenizer.pad(
                    {"input_ids": chunk}, padding=True, padding_side="left", return_tensors="pt"
                )
                batch = {k: v.to(device) for k, v in batch.items()}
                output = self.model.generate(**batch, generation_config=config)
                new_tokens = output[:, batch["input_ids"].shape[1] :]
                texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                candidates += [texts[i * n : (i + 1) * n] for i in range(len(chunk))]
        return candidates

    def _score(self, scorer: RewardScorer, prompts: Sequence, candidates: list[list[str]]) -> torch.Tensor:
        n = len(candidates[0]) if candidates else 0
        flat_prompts = [p for p, cands in zip(prompts, candidates) for _ in cands]
        flat = [c for cands in candidates for c in cands]
        return scorer(flat_prompts, flat).reshape(len(candidates), n)

    # -------------------------------------------------------------------------------------------- public
    def __call__(self, prompts: Sequence, top_k: int = 1) -> BestOfNOutput:
        """Sample ``n`` candidates per prompt and return the ``top_k`` best with their rewards, best first."""
        if not 1 <= top_k <= self.n:
            raise ValueError(f"top_k must be between 1 and n={self.n}, got {top_k}")
        prompts = list(prompts)
        candidates = self.generate(prompts)
        scores = self._score(self.scorer, prompts, candidates)
        order = scores.argsort(dim=1, descending=True, stable=True)[:, :top_k]
        return BestOfNOutput(
            prompts=prompts,
            completions=[[candidates[i][j] for j in order[i].tolist()] for i in range(len(prompts))],
            scores=[[float(scores[i, j]) for j in order[i].tolist()] for i in range(len(prompts))],
            candidates=candidates,
            candidate_scores=scores,
        )

    def evaluate(
        self,
        prompts: Sequence,
        gold,
        n: int | None = None,
        ns: Sequence[int] | None = None,
        proxies: Mapping[str, object] | None = None,
        gold_tokenizer=None,
        candidates: list[list[str]] | None = None,
    ) -> BestOfNEvaluation:
        """Best-of-n overoptimization: ``N = n`` samples per prompt drawn once; for each ``n' <= N`` in ``ns`` the
        expected proxy and gold reward of the best-of-n' choice (unbiased estimator) at KL ``log n' - (n'-1)/n'``.

        Args:
            prompts: held-out prompts.
            gold: the gold reward (model + ``gold_tokenizer``, ``(model, tokenizer)``, scorer or callable).
            n: samples drawn per prompt (``N``; default ``self.n``).
            ns: the ``n'`` to evaluate (default: powers of two up to ``N``); each must be ``<= N``.
            proxies: several proxies to compare on the same samples, ``{name: reward}`` (default: this sampler's
                reward).
            candidates: samples drawn earlier (``generate(prompts, n)``'s output, e.g. cached in a file), ``N`` per
                prompt: nothing is sampled, so several reward models can be compared on the very same samples.
        """
        num_samples = n or self.n
        ns = list(ns) if ns is not None else None
        if ns is not None and max(ns) > num_samples:
            raise ValueError(
                f"best-of-{max(ns)} cannot be estimated from N={num_samples} samples per prompt; draw more samples "
                f"(n={max(ns)} or more) or evaluate only n <= {num_samples}"
            )
        gold_scorer = _as_scorer(gold, gold_tokenizer, name="gold", batch_size=self.reward_batch_size)
        proxy_scorers = (
            {name: _as_scorer(r, name=name, batch_size=self.reward_batch_size) for name, r in proxies.items()}
            if proxies
            else {self.scorer.name: self.scorer}
        )
        prompts = list(prompts)
        if candidates is None:
            candidates = self.generate(prompts, n=num_samples)
        elif len(candidates) != len(prompts) or any(len(c) != num_samples for c in candidates):
            raise ValueError(
                f"candidates= must hold N={num_samples} samples for each of the {len(prompts)} prompts; got "
                f"{len(candidates)} lists of lengths {sorted({len(c) for c in candidates})}"
            )
        cache: dict = {}
        gold_scores = self._score_cached(gold_scorer, prompts, candidates, cache)
        records, proxy_scores = [], {}
        for name, scorer in proxy_scorers.items():
            proxy_scores[name] = self._score_cached(scorer, prompts, candidates, cache)
            records += best_of_n_curve(proxy_scores[name], gold_scores, ns, proxy_name=name)
        return BestOfNEvaluation(records, gold_scores, proxy_scores, candidates)

    def _score_cached(self, scorer: RewardScorer, prompts, candidates, cache: dict) -> torch.Tensor:
        """Score once per (model, tokenizer): ensembles sharing members (mean/wco/uwo of the same models) reuse the
        members' scores instead of running every member again."""
        from .ensemble import RewardEnsemble

        reward = scorer.reward
        if isinstance(reward, RewardEnsemble):
            if scorer.member_scorers is not None:
                members = scorer.member_scorers
            else:  # one shared tokenizer: score each member with it (same ids the ensemble's forward gives them)
                members = [
                    RewardScorer(
                        m, scorer.tokenizer, scorer.batch_size, None, scorer.append_eos, f"{scorer.name}[{i}]"
                    )
                    for i, m in enumerate(reward.members)
                ]
            member_scores = [self._score_cached(member, prompts, candidates, cache) for member in members]
            stacked = torch.stack([m.reshape(-1) for m in member_scores], dim=-1)
            return reward.combine(stacked).reshape(len(candidates), -1).float()
        key = (id(reward), id(scorer.tokenizer), scorer.append_eos)
        if key not in cache:
            cache[key] = self._score(scorer, prompts, candidates)
        return cache[key]
