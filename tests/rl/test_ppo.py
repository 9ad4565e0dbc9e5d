"""TRL PPO with the DMoERM object (and an ensemble) as reward_model: real updates, checks before training."""

from __future__ import annotations

import sys

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

from dmoerm_trl.rl import GoldRewardCallback, PPOUnavailableError, RewardEnsemble, require_ppo
from dmoerm_trl.rl.ppo import build_ppo_trainer, is_ppo_available, ppo_unavailable_reason
from dmoerm_trl.rl.recipe_args import encode_prompt
from dmoerm_trl.testing_utils import make_tiny_bert_tokenizer

# Skipped only where the installed TRL has no PPO, with the reason naming the supported range and the extra.
_skip_without_ppo = pytest.mark.skipif(not is_ppo_available(), reason=ppo_unavailable_reason())


def requires_ppo(test):
    """Mark a test ``ppo`` and skip it, with the reason naming the supported range and extra, where PPO is missing."""
    return pytest.mark.ppo(_skip_without_ppo(test))


def ppo_args(tmp_path, **overrides):
    PPOConfig, _ = require_ppo()
    kwargs = {
        "output_dir": str(tmp_path / "ppo"),
        "per_device_train_batch_size": 4,
        "total_episodes": 8,
        "response_length": 8,
        "num_ppo_epochs": 1,
        "num_mini_batches": 1,
        "local_rollout_forward_batch_size": 4,
        "bf16": False,
        "report_to": [],
        "save_strategy": "no",
        "num_sample_generations": 0,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "seed": 0,
        "learning_rate": 1e-3,
        "stop_token": "eos",
    }
    kwargs.update(overrides)
    return PPOConfig(**kwargs)


def models(rl_assets):
    policy = AutoModelForCausalLM.from_pretrained(rl_assets["policy"])
    value = AutoModelForSequenceClassification.from_pretrained(rl_assets["policy"], num_labels=1)
    return policy, value


def dataset(tokenizer, prompts):
    return Dataset.from_dict({"input_ids": [encode_prompt(tokenizer, p) for p in prompts]})


@requires_ppo
def test_ppo_trains_with_the_dmoerm_object_as_reward_model(
    tmp_path, rl_assets, dmoerm, gold, policy_tokenizer, prompts
):
    reward_model, reward_tokenizer = dmoerm
    reward_model.train()  # TRL leaves reward models in training mode; the DMoERM must still score like in eval
    policy, value = models(rl_assets)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    seen = []
    reward_model.reward_view.register_forward_hook(lambda m, i, out: seen.append(out.last_hidden_state[:, 0, 0]))
    callback = GoldRewardCallback(
        prompts[-4:],
        gold=gold,
        proxy=dmoerm,
        eval_steps=1,
        samples_per_prompt=1,
        generation_config=GenerationConfig(max_new_tokens=8, do_sample=True, top_k=0, top_p=1.0),
    )
    trainer = build_ppo_trainer(
        ppo_args(tmp_path),
        policy,
        policy_tokenizer,
        reward_model,
        value,
        dataset(policy_tokenizer, prompts[:8]),
        reward_tokenizer=reward_tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "objective/scores" in h]
    assert len(logs) == 2  # 8 episodes / batch 4
    # The scores PPO optimized are exactly what the DMoERM computed (router + experts + aggregator).
    assert len(seen) == 2
    for log, rewards in zip(logs, seen):
        assert log["objective/scores"] == pytest.approx(rewards.mean().item(), abs=1e-5)
        assert rewards.std() > 0
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert [r["step"] for r in callback.records] == [0, 1, 2]
    assert callback.records[-1]["kl"] > 0


@requires_ppo
def test_ppo_trains_with_a_reward_ensemble(tmp_path, rl_assets, proxies, dmoerm, policy_tokenizer, prompts):
    ensemble = RewardEnsemble([proxies[0][0], proxies[1][0], dmoerm[0]], mode="wco")
    policy, value = models(rl_assets)
    trainer = build_ppo_trainer(
        ppo_args(tmp_path, total_episodes=4),
        policy,
        policy_tokenizer,
        ensemble,
        value,
        dataset(policy_tokenizer, prompts[:4]),
        reward_tokenizer=proxies[0][1],
    )
    trainer.train()
    assert len([h for h in trainer.state.log_history if "objective/scores" in h]) == 1


@requires_ppo
def test_ppo_setup_errors_before_training(tmp_path, rl_assets, dmoerm, policy_tokenizer, prompts, tiny_bert_path):
    reward_model, reward_tokenizer = dmoerm
    policy, value = models(rl_assets)
    data = dataset(policy_tokenizer, prompts[:4])
    with pytest.raises(ValueError, match="policy and reward model tokenizers differ.*GRPO/RLOO"):
        build_ppo_trainer(
            ppo_args(tmp_path),
            policy,
            policy_tokenizer,
            reward_model,
            value,
            data,
            reward_tokenizer=make_tiny_bert_tokenizer(),
        )
    bert_rm = AutoModelForSequenceClassification.from_pretrained(tiny_bert_path, num_labels=1)
    with pytest.raises(ValueError, match="embedding has only .* rows|PPO's reward contract"):
        build_ppo_trainer(ppo_args(tmp_path), policy, policy_tokenizer, bert_rm, value, data)
    reward_model.set_training_stage("capability", category="chitchat", capability="empathy")
    with pytest.raises(ValueError, match="training stage 'capability'"):
        build_ppo_trainer(
            ppo_args(tmp_path), policy, policy_tokenizer, reward_model, value, data, reward_tokenizer=reward_tokenizer
        )
    reward_model.set_training_stage(None)
    with pytest.raises(ValueError, match="value model must be a plain"):
        build_ppo_trainer(ppo_args(tmp_path), policy, policy_tokenizer, reward_model, reward_model, data)


def test_missing_ppo_gives_the_supported_range_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl.experimental.ppo", None)  # what trl >= 1.13 looks like
    with pytest.raises(PPOUnavailableError, match=r'trl>=1\.10,<1\.13.*pip install "dmoerm-trl\[ppo\]"'):
        require_ppo()
