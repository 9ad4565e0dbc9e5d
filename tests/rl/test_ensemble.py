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
    "<|im_start|>user\nTell me a joke.<|im_end|>\n"
    "<|im_start|>assistant\nWhy did the chicken cross the road?<|im_end|>\n",
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
    texts = [policy_tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)
             for text in ("hello there", "What is the capital of France?")]
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
