"""RewardEnsemble: the three modes, HF outputs, TRL PPO's reward contract, save/load, mixed tokenizers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from dmoerm_trl.rl import RewardEnsemble, RewardScorer
from dmoerm_trl.testing_utils import make_tiny_bert

# One-turn ChatML conversations (the tiny tokenizer's template; a DMoERM member routes on the prompt).
TEXTS = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.<|im_end|>\n",
    (
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        "<|im_start|>assistant\nWhy did the chicken cross the road?<|im_end|>\n"
    ),
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n",
]


def member_rewards(models, batch):
    with torch.no_grad():
        return torch.stack([m(**batch).logits[:, 0] for m in models], dim=-1)


@pytest.mark.parametrize("mode", ["mean", "wco", "uwo"])
def test_modes_combine_member_rewards(proxies, mode):
    models = [m for m, _ in proxies]
    tokenizer = proxies[0][1]
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    ensemble = RewardEnsemble(models, mode=mode, uwo_lambda=0.7)
    with torch.no_grad():
        out = ensemble(**batch)
    rewards = member_rewards(models, batch)
    expected = {
        "mean": rewards.mean(-1),
        "wco": rewards.min(-1).values,
        "uwo": rewards.mean(-1) - 0.7 * ((rewards - rewards.mean(-1, keepdim=True)) ** 2).mean(-1),
    }[mode]
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.member_rewards, rewards)
    torch.testing.assert_close(out.logits[:, 0], expected)
    # The members disagree, so the modes really differ (wco <= uwo <= mean).
    assert not torch.allclose(rewards[:, 0], rewards[:, 1])


def test_training_mode_no_grad_scores_like_eval_mode(proxies):
    ensemble = RewardEnsemble([m for m, _ in proxies], mode="mean")
    batch = proxies[0][1](TEXTS, return_tensors="pt", padding=True)
    ensemble.eval()
    with torch.no_grad():
        eval_scores = ensemble(**batch).logits
    ensemble.train()  # how TRL leaves reward models
    with torch.no_grad():
        train_scores = ensemble(**batch).logits
    torch.testing.assert_close(train_scores, eval_scores)
    assert ensemble.training  # mode restored


def test_ppo_contract_matches_each_member_read_by_trl(proxies, dmoerm, policy_tokenizer):
    get_reward = pytest.importorskip("trl.experimental.utils").get_reward
    models = [m for m, _ in proxies] + [dmoerm[0]]
    ensemble = RewardEnsemble(models, mode="uwo", uwo_lambda=0.5).train()
    pad = policy_tokenizer.pad_token_id
    # PPO queries: chat-templated prompts ending with the generation prompt (the DMoERM member routes on them).
    texts = [
        policy_tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        for text in ("hello there", "What is the capital of France?")
    ]
    queries = policy_tokenizer(texts, padding=True, return_tensors="pt")
    responses = torch.tensor([[11, 12, 13, pad, pad], [21, 22, 23, 24, 25]])
    query_responses = torch.cat([queries["input_ids"], responses], dim=1)
    context = queries["input_ids"].shape[1]
    with torch.no_grad():
        logits, scores, _ = get_reward(ensemble, query_responses, pad, context)
        per_member = torch.stack([get_reward(m, query_responses, pad, context)[1] for m in models], dim=-1)
    assert logits.shape == (2, query_responses.shape[1], 1)
    expected = per_member.mean(-1) - 0.5 * per_member.var(-1, unbiased=False)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)


def test_save_and_load_round_trip(tmp_path, proxies, dmoerm):
    from transformers import AutoModelForSequenceClassification as Auto

    models = [proxies[0][0], dmoerm[0]]
    tokenizer = proxies[0][1]
    ensemble = RewardEnsemble(models, mode="wco", tokenizers=[proxies[0][1], dmoerm[1]])
    ensemble.save_pretrained(tmp_path / "ens")
    assert sorted(p.name for p in (tmp_path / "ens").iterdir()) == ["config.json", "member_0", "member_1"]
    assert not list((tmp_path / "ens").rglob("*.bin"))  # safetensors only
    reloaded = RewardEnsemble.from_pretrained(tmp_path / "ens")
    via_auto = Auto.from_pretrained(tmp_path / "ens")
    assert isinstance(via_auto, RewardEnsemble) and reloaded.config.mode == "wco"
    assert type(reloaded.members[1]).__name__ == "DMoERMForSequenceClassification"
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, ensemble(**batch).logits)
        torch.testing.assert_close(via_auto(**batch).logits, ensemble(**batch).logits)


def test_members_with_different_tokenizers_score_text(tmp_path, proxies, tiny_bert_tokenizer):
    llama_rm, llama_tokenizer = proxies[0]
    bert_path = make_tiny_bert(tmp_path / "bert")
    bert_rm = AutoModelForSequenceClassification.from_pretrained(bert_path, num_labels=1).eval()
    ensemble = RewardEnsemble([llama_rm, bert_rm], mode="mean", tokenizers=[llama_tokenizer, tiny_bert_tokenizer])
    prompts, completions = ["What is 2+2?", "Say hi."], [" 4", " Hello!"]
    combined = RewardScorer(ensemble)(prompts, completions)
    separately = torch.stack(
        [
            RewardScorer(llama_rm, llama_tokenizer)(prompts, completions),
            RewardScorer(bert_rm, tiny_bert_tokenizer)(prompts, completions),
        ],
        dim=-1,
    ).mean(-1)
    torch.testing.assert_close(combined, separately)
    # As a GRPO/RLOO reward function (TRL's signature), the same numbers:
    reward_function = ensemble.as_reward_function()
    assert reward_function(prompts=prompts, completions=completions) == pytest.approx(separately.tolist())


def test_bad_ensembles_are_rejected(proxies, dmoerm):
    with pytest.raises(ValueError, match="mode must be one of"):
        RewardEnsemble([proxies[0][0]], mode="max")
    with pytest.raises(ValueError, match="at least one member"):
        RewardEnsemble([])
    with pytest.raises(ValueError, match="2 tokenizers for 1 members"):
        RewardEnsemble([proxies[0][0]], tokenizers=[proxies[0][1], proxies[0][1]])
    model = dmoerm[0]
    model.set_training_stage("task", category="chitchat")
    with pytest.raises(ValueError, match="member 1.*training stage 'task'"):
        RewardEnsemble([proxies[0][0], model])
    with pytest.raises(ValueError, match="as_reward_function\\(\\) re-tokenizes"):
        RewardEnsemble([proxies[0][0]]).as_reward_function()


def test_standardized_members_make_wco_more_than_the_lowest_offset_member(tmp_path, proxies, prompts):
    """Two members that differ by an offset of 5 (and a little in their weights): raw, WCO is always the member with
    the lower offset; standardised on reference texts, it picks per text, and the statistics are saved and loaded."""
    import copy

    low, tokenizer = proxies[0]
    high = copy.deepcopy(proxies[1][0])
    with torch.no_grad():
        high.score.bias = torch.nn.Parameter(torch.full((1,), 5.0))  # an offset only (the head had no bias)
    reference_prompts = [p for p in prompts for _ in range(2)]
    reference_completions = [" Yes, of course.", " No idea, sorry."] * len(prompts)
    raw = RewardEnsemble([low, high], mode="wco")
    raw_members = torch.stack(
        [RewardScorer(m, tokenizer)(reference_prompts, reference_completions) for m in (low, high)], dim=-1
    )
    raw_wco = RewardScorer(raw, tokenizer)(reference_prompts, reference_completions)
    assert (raw_members[:, 1] > raw_members[:, 0]).all()
    torch.testing.assert_close(raw_wco, raw_members[:, 0])  # WCO = the lowest-offset member on every text

    ensemble = RewardEnsemble([low, high], mode="wco").standardize(reference_prompts, reference_completions, tokenizer)
    assert ensemble.is_standardized and ensemble.config.num_reference_texts == len(reference_prompts)
    assert ensemble.config.member_means[1] - ensemble.config.member_means[0] > 4  # the offset was measured
    standardized = (raw_members.double() - torch.tensor(ensemble.config.member_means)) / torch.tensor(
        ensemble.config.member_stds
    )
    torch.testing.assert_close(standardized.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0)
    wco = RewardScorer(ensemble, tokenizer)(reference_prompts, reference_completions)
    torch.testing.assert_close(wco.double(), standardized.min(-1).values, atol=1e-5, rtol=1e-5)
    picks_low = (standardized[:, 0] <= standardized[:, 1]).float().mean()
    assert 0.1 < picks_low < 0.9, float(picks_low)  # both members decide on some texts
    # the forward (token ids) combines the same way, and the statistics travel with the saved ensemble
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        members = member_rewards([low, high], batch).double()
        expected = (
            ((members - torch.tensor(ensemble.config.member_means)) / torch.tensor(ensemble.config.member_stds))
            .min(-1)
            .values
        )
        torch.testing.assert_close(ensemble(**batch).logits[:, 0].double(), expected, atol=1e-5, rtol=1e-5)
    ensemble.save_pretrained(tmp_path / "ens")
    reloaded = RewardEnsemble.from_pretrained(tmp_path / "ens")
    assert reloaded.is_standardized and reloaded.config.member_stds == pytest.approx(ensemble.config.member_stds)
    torch.testing.assert_close(reloaded.combine(raw_members), ensemble.combine(raw_members))
    with pytest.raises(ValueError, match="member statistics need"):
        ensemble.set_member_statistics(torch.zeros(1, 2))
