"""The best-of-n report helpers: per-proxy curves from the records, per-prompt gold gains, NaN gold."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dmoerm_trl.rl import (
    BestOfNEvaluation,
    BestOfNSampler,
    best_of_n_curve,
    best_of_n_curves,
    best_of_n_gain,
    best_of_n_gains,
    nan_gold_counts,
)
from dmoerm_trl.synthetic import GoldReward

COLD = [{"role": "user", "content": "I caught a cold and I'm stuck in bed."}]  # a conversation of the synthetic world
UNKNOWN = [{"role": "user", "content": "Summarise the rules of cricket."}]  # not one: GoldReward(on_unknown="nan")
ANSWERS = [
    "I'm sorry you're dealing with this. A cold can knock you out for a few days. Do you have soup?",
    "- Rest.\n- Drink water.\n- Take medicine.",
    "Get well soon.",
    "",
]


def subset_gain(proxy: list[float], gold: list[float], n: int) -> float:
    """Mean over every n-subset of the gold of its proxy-argmax (distinct proxies), minus the mean gold."""
    subsets = list(itertools.combinations(range(len(proxy)), n))
    picked = [gold[max(subset, key=lambda i: proxy[i])] for subset in subsets]
    return sum(picked) / len(subsets) - sum(gold) / len(gold)


def test_gain_without_nan_equals_subset_enumeration():
    proxy = [[0.1, 0.9, 0.5, 0.3], [0.4, -1.0, 2.0, 0.0]]
    gold = [[1.0, 2.0, 3.0, 4.0], [0.5, 7.0, -2.0, 1.5]]
    # By hand, prompt 0: n = N picks sample 1 (gold 2) against a mean of 2.5; n = 2: the six pairs pick golds
    # 2, 3, 4, 2, 2, 3, mean 16/6.
    assert best_of_n_gain(torch.tensor(proxy), torch.tensor(gold))[0].item() == pytest.approx(-0.5)
    assert best_of_n_gain(torch.tensor(proxy), torch.tensor(gold), 2)[0].item() == pytest.approx(16 / 6 - 2.5)
    for n in (1, 2, 3, 4):
        expected = [subset_gain(p, g, n) for p, g in zip(proxy, gold)]
        assert best_of_n_gain(torch.tensor(proxy), torch.tensor(gold), n).tolist() == pytest.approx(expected)
    assert best_of_n_gain(torch.tensor(proxy), torch.tensor(gold), 1).abs().max().item() < 1e-12  # n = 1: no gain

    result = BestOfNEvaluation([], torch.tensor(gold), {"rm": torch.tensor(proxy), "neg": -torch.tensor(proxy)})
    gains = best_of_n_gains(result)
    assert gains["rm"] == pytest.approx([subset_gain(p, g, 4) for p, g in zip(proxy, gold)])
    assert gains["neg"] == pytest.approx([subset_gain([-x for x in p], g, 4) for p, g in zip(proxy, gold)])
    # Prompt 1, n = 2: the six pairs pick golds 0.5, -2, 0.5, -2, 1.5, -2 (mean -3.5/6) against a mean of 1.75.
    assert best_of_n_gains(result, 2, decimals=3)["rm"] == [round(16 / 6 - 2.5, 3), round(-3.5 / 6 - 1.75, 3)]
    assert nan_gold_counts(result.gold_scores) == {"nan_gold": 0, "nan_gold_prompts": 0}


def test_nan_gold_gives_a_nan_gain_for_that_prompt_only_and_is_counted():
    proxy = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.4, -1.0, 2.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    gold = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, math.nan, -2.0, 1.5], [math.nan] * 4])
    result = BestOfNEvaluation([], gold, {"rm": proxy})
    for n in (1, 2, 4):
        gains = best_of_n_gains(result, n)["rm"]
        assert gains[0] == pytest.approx(subset_gain(proxy[0].tolist(), gold[0].tolist(), n))
        assert math.isnan(gains[1]) and math.isnan(gains[2])  # never a mean of the prompt's other samples
    assert nan_gold_counts(gold) == {"nan_gold": 5, "nan_gold_prompts": 2}
    # A NaN proxy score (a reward function that returned None) would rank first: that prompt's gain is NaN too.
    nan_proxy = proxy.clone()
    nan_proxy[0, 0] = math.nan
    assert math.isnan(best_of_n_gain(nan_proxy, gold)[0].item())
    with pytest.raises(ValueError, match=r"must both be \(num_prompts, N\)"):
        best_of_n_gain(proxy[:, :2], gold)


def test_curves_and_gains_of_an_evaluation_with_prompts_outside_the_gold_world(policy, policy_tokenizer):
    gold = GoldReward(on_unknown="nan")
    sampler = BestOfNSampler(policy, policy_tokenizer, lambda prompts, completions, **kw: [0.0] * len(completions))
    prompts, candidates = [COLD, UNKNOWN], [ANSWERS, ANSWERS]

    def length(prompts, completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    result = sampler.evaluate(prompts, gold=gold, n=4, proxies={"length": length}, candidates=candidates)
    golds = gold(prompts=[COLD] * 4, completions=ANSWERS)
    assert all(math.isfinite(g) for g in golds)  # an empty answer is scored too: only the prompt makes NaN
    lengths = [float(len(a)) for a in ANSWERS]
    gains = best_of_n_gains(result, 4)["length"]
    assert gains[0] == pytest.approx(golds[lengths.index(max(lengths))] - sum(golds) / 4)
    assert math.isnan(gains[1])
    assert nan_gold_counts(result.gold_scores) == {"nan_gold": 4, "nan_gold_prompts": 1}
    curves = best_of_n_curves(result.records)
    assert list(curves) == ["length"] and sorted(curves["length"]) == [1, 2, 4]
    # The curves are the records' means over prompts: NaN at every n, not an average of the scorable prompts.
    assert all(math.isnan(point["gold"]) for point in curves["length"].values())
    assert curves["length"][4]["proxy"] == pytest.approx(max(lengths), abs=1e-4)


def test_curves_round_the_records_and_skip_rl_rows():
    proxy = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.4, -1.0, 2.0, 0.0]])
    gold = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 7.0, -2.0, 1.5]])
    records = best_of_n_curve(proxy, gold, proxy_name="rm") + [
        {"source": "rl", "proxy": "rm", "n": None, "step": 10, "kl": 0.2, "sqrt_kl": 0.45, "gold_reward": 1.0}
    ]
    curves = best_of_n_curves(records)
    assert sorted(curves["rm"]) == [1, 2, 4]
    for record in records[:3]:
        point = curves["rm"][record["n"]]
        assert point == {
            "sqrt_kl": round(record["sqrt_kl"], 4),
            "gold": round(record["gold_reward"], 4),
            "gold_sem": round(record["gold_sem"], 4),
            "proxy": round(record["proxy_reward"], 4),
        }
    assert curves["rm"][4]["gold"] == pytest.approx((2.0 - 2.0) / 2)  # the golds of the proxy's argmaxes
    assert best_of_n_curves(records, decimals=1)["rm"][2]["sqrt_kl"] == round(records[1]["sqrt_kl"], 1)
