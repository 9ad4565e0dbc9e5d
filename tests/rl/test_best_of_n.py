"""Best-of-n: the unbiased estimator, the sampler with every kind of reward, the evaluation, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers import GenerationConfig

from dmoerm_trl.rl import BestOfNSampler, RewardEnsemble, RewardScorer, bon_kl, expected_best_of_n
from dmoerm_trl.rl.best_of_n import best_of_n_curve

GEN = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)


def brute_force(proxy, values, n):
    """Average over all n-subsets of the value of the subset's proxy-argmax (ties: uniform among the maxima)."""
    total = torch.zeros(proxy.shape[0], dtype=torch.float64)
    subsets = list(itertools.combinations(range(proxy.shape[1]), n))
    for subset in subsets:
        sub_proxy, sub_values = proxy[:, list(subset)], values[:, list(subset)]
        is_max = sub_proxy == sub_proxy.max(dim=1, keepdim=True).values
        total += (sub_values * is_max).sum(1) / is_max.sum(1)
    return total / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_estimator_equals_exhaustive_enumeration(n):
    generator = torch.Generator().manual_seed(n)
    proxy = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    gold = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(expected_best_of_n(proxy, gold, n), brute_force(proxy, gold, n))


def test_estimator_with_ties_does_not_depend_on_sample_order():
    proxy = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0]], dtype=torch.float64)
    gold = torch.tensor([[0.5, 1.0, -1.0, 2.0, 4.0, 0.0]], dtype=torch.float64)
    for n in range(1, 7):
        expected = brute_force(proxy, gold, n)
        for permutation in (torch.arange(6), torch.tensor([4, 2, 1, 0, 5, 3])):
            torch.testing.assert_close(expected_best_of_n(proxy[:, permutation], gold[:, permutation], n), expected)


def test_estimator_limits_and_kl():
    proxy = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    gold = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert expected_best_of_n(proxy, gold, 1).item() == pytest.approx(2.5)  # n = 1: the plain mean
    assert expected_best_of_n(proxy, gold, 4).item() == pytest.approx(2.0)  # n = N: the proxy's argmax
    assert bon_kl(1) == 0.0 and bon_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError, match="best-of-5 needs at least 5 samples per prompt, but only N=4"):
        expected_best_of_n(proxy, gold, 5)
    curve = best_of_n_curve(proxy, gold)
    assert [r["n"] for r in curve] == [1, 2, 4]
    assert [r["proxy_reward"] for r in curve] == sorted(r["proxy_reward"] for r in curve)


def test_sampler_returns_sorted_top_k_consistent_with_scores(policy, policy_tokenizer, proxies, prompts):
    model, tokenizer = proxies[0]
    sampler = BestOfNSampler(policy, policy_tokenizer, model, tokenizer, n=4, generation_config=GEN, seed=0)
    out = sampler(prompts[:3], top_k=2)
    assert out.candidate_scores.shape == (3, 4) and all(len(c) == 4 for c in out.candidates)
    for i in range(3):
        best = out.candidate_scores[i].argsort(descending=True)[:2].tolist()
        assert out.completions[i] == [out.candidates[i][j] for j in best]
        assert out.scores[i] == pytest.approx(out.candidate_scores[i, best].tolist())
        assert out.scores[i][0] == pytest.approx(out.candidate_scores[i].max().item())
    # The scores are the reward model's own scores of those texts.
    rescored = RewardScorer(model, tokenizer)(prompts[:3], out.best)
    torch.testing.assert_close(rescored, torch.tensor([s[0] for s in out.scores]))
    # Same seed, same samples.
    again = BestOfNSampler(policy, policy_tokenizer, model, tokenizer, n=4, generation_config=GEN, seed=0)(prompts[:3])
    assert again.candidates == out.candidates


def test_sampler_with_dmoerm_ensemble_and_callable(policy, policy_tokenizer, dmoerm, proxies):
    text_prompts = ["What is the capital of France?", "Tell me a joke."]
    ensemble = RewardEnsemble([dmoerm[0], proxies[0][0]], mode="wco")

    def length_reward(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    for reward, reward_tokenizer in ((dmoerm[0], dmoerm[1]), (ensemble, proxies[0][1]), (length_reward, None)):
        sampler = BestOfNSampler(
            policy, policy_tokenizer, reward, reward_tokenizer, n=3, generation_config=GEN, seed=1
        )
        out = sampler(text_prompts)
        assert len(out.best) == 2
        assert torch.equal(out.candidate_scores.max(dim=1).values, torch.tensor([s[0] for s in out.scores]))
    lengths = torch.tensor([[len(c) for c in cands] for cands in out.candidates], dtype=torch.float32)
    torch.testing.assert_close(out.candidate_scores, lengths)


def test_evaluate_compares_proxies_against_gold(policy, policy_tokenizer, proxies, gold, dmoerm, prompts, tmp_path):
    sampler = BestOfNSampler(
        policy, policy_tokenizer, proxies[0][0], proxies[0][1], n=8, generation_config=GEN, seed=0
    )
    result = sampler.evaluate(
        prompts[:4],
        gold=gold,
        proxies={
            "single": proxies[0],
            "dmoerm": dmoerm,
            "ensemble_mean": (RewardEnsemble([m for m, _ in proxies]), proxies[0][1]),
        },
    )
    assert {r["proxy"] for r in result.records} == {"single", "dmoerm", "ensemble_mean"}
    single = [r for r in result.records if r["proxy"] == "single"]
    assert [r["n"] for r in single] == [1, 2, 4, 8]
    assert [r["kl"] for r in single] == pytest.approx([bon_kl(n) for n in (1, 2, 4, 8)])
    # Expected max of the proxy never decreases with n; at n = N it is the per-prompt max.
    assert [r["proxy_reward"] for r in single] == sorted(r["proxy_reward"] for r in single)
    assert single[-1]["proxy_reward"] == pytest.approx(result.proxy_scores["single"].max(1).values.mean().item())
    # n = 1 is the mean over all samples for both rewards.
    assert single[0]["gold_reward"] == pytest.approx(result.gold_scores.mean().item())
    # Ensembles are scored from cached member scores: same numbers as running the ensemble itself.
    ensemble = RewardEnsemble([m for m, _ in proxies])
    flat_prompts = [p for p in prompts[:4] for _ in range(8)]
    flat = [c for cands in result.candidates for c in cands]
    direct = RewardScorer(ensemble, proxies[0][1])(flat_prompts, flat).reshape(4, 8)
    torch.testing.assert_close(result.proxy_scores["ensemble_mean"], direct, rtol=1e-5, atol=1e-6)
    result.to_csv(tmp_path / "bon.csv")
    assert (tmp_path / "bon.csv").read_text().splitlines()[0].startswith("source,proxy,n,step,kl")
    # Samples drawn earlier (e.g. cached in a file) are scored as given, nothing is sampled: the same curves.
    sampler.generate = None  # would fail if called
    again = sampler.evaluate(prompts[:4], gold=gold, proxies={"single": proxies[0]}, candidates=result.candidates)
    assert again.records == [r for r in result.records if r["proxy"] == "single"]
    with pytest.raises(ValueError, match="N=8 samples for each of the 4 prompts"):
        sampler.evaluate(prompts[:4], gold=gold, candidates=[c[:3] for c in result.candidates])


def test_bad_input(policy, policy_tokenizer, proxies, prompts):
    model, tokenizer = proxies[0]
    sampler = BestOfNSampler(policy, policy_tokenizer, model, tokenizer, n=2, generation_config=GEN)
    with pytest.raises(ValueError, match="best-of-4 cannot be estimated from N=2"):
        sampler.evaluate(prompts[:2], gold=proxies[1], ns=[1, 4])
    with pytest.raises(ValueError, match="gold.* returned shape \\(1,\\) for 4 completions"):
        sampler.evaluate(prompts[:2], gold=lambda prompts, completions, **kw: [0.0])
    with pytest.raises(ValueError, match="too long for the policy: prompt 1 has"):
        sampler(["hi", "word " * 300])
    with pytest.raises(ValueError, match="needs sampling"):
        BestOfNSampler(
            policy, policy_tokenizer, model, tokenizer, n=2, generation_config=GenerationConfig(do_sample=False)
        )(["hi"])
    with pytest.raises(ValueError, match="top_k must be between 1 and n=2"):
        sampler(["hi"], top_k=3)
    model.config.num_labels = 3
    with pytest.raises(ValueError, match="num_labels=3"):
        BestOfNSampler(policy, policy_tokenizer, model, tokenizer)
