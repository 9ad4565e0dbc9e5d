"""GRPO and RLOO with a DMoERM / an ensemble as reward_funcs (real training steps), and the gold-reward callback."""

from __future__ import annotations

import csv

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, GenerationConfig
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from dmoerm_trl.rl import GoldRewardCallback, RewardEnsemble, RewardScorer
from dmoerm_trl.rl.grpo import reward_funcs_for
from dmoerm_trl.rl.rewards import length_penalty

TEXT_PROMPTS = ["What is the capital of France?", "Tell me a joke.", "How are you?", "Explain rain."]


def config(cls, tmp_path, **overrides):
    kwargs = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "max_steps": 2,
        "bf16": False,
        "use_cpu": True,
        "report_to": [],
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
    }
    kwargs.update(overrides)
    return cls(**kwargs)


def test_grpo_with_dmoerm_rewards_are_the_dmoerm_scores(tmp_path, rl_assets, dmoerm, policy_tokenizer, prompts):
    model, reward_tokenizer = dmoerm
    policy = AutoModelForCausalLM.from_pretrained(rl_assets["policy"])
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    # Conversational prompts: TRL renders prompt + completion with the chat template, whose assistant opener tells
    # the DMoERM's router where the prompt ends.
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=model,
        args=config(GRPOConfig, tmp_path, learning_rate=1e-3),
        train_dataset=Dataset.from_dict({"prompt": prompts[:4] * 2}),
        processing_class=policy_tokenizer,
        reward_processing_classes=reward_tokenizer,
    )
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())  # it really trained
    assert "rewards/dmoerm/mean" in trainer.state.log_history[0]
    # TRL decoded, re-tokenized and scored the completions with the DMoERM; recompute them ourselves.
    logged_prompts, logged_completions = list(trainer._logs["prompt"]), list(trainer._logs["completion"])
    # trl 1.16 logs the prompt messages, trl 1.12 their decoded text: map each back to its conversation.
    by_content = {p[-1]["content"]: p for p in prompts[:4]}
    logged_prompts = [
        p if isinstance(p, list) else next(v for k, v in by_content.items() if k in p) for p in logged_prompts
    ]
    logged_rewards = torch.tensor(list(trainer._logs["rewards"]["dmoerm"]))
    ours = RewardScorer(model, reward_tokenizer, append_eos=False)(logged_prompts, logged_completions)
    torch.testing.assert_close(ours, logged_rewards, rtol=1e-4, atol=1e-5)
    assert logged_rewards.std() > 0  # different completions get different rewards


def test_grpo_with_dmoerm_and_a_rule_based_reward_weighted(tmp_path, rl_assets, dmoerm, policy_tokenizer, prompts):
    model, reward_tokenizer = dmoerm
    funcs, classes = reward_funcs_for(model, reward_tokenizer, ["dmoerm_trl.rl.rewards:length_penalty"])
    assert funcs[1] is length_penalty and classes == [reward_tokenizer, None]
    trainer = GRPOTrainer(
        model=rl_assets["policy"],
        reward_funcs=funcs,
        args=config(GRPOConfig, tmp_path, reward_weights=[1.0, 0.5]),
        train_dataset=Dataset.from_dict({"prompt": prompts[:8]}),
        processing_class=policy_tokenizer,
        reward_processing_classes=classes,
    )
    trainer.train()
    for log in trainer.state.log_history[:2]:
        combined = log["rewards/dmoerm/mean"] + 0.5 * log["rewards/length_penalty/mean"]
        assert log["reward"] == pytest.approx(combined, abs=1e-5)


def test_rloo_with_an_ensemble_and_gold_tracking(tmp_path, rl_assets, proxies, gold, policy_tokenizer, prompts):
    ensemble = RewardEnsemble([m for m, _ in proxies], mode="uwo")
    ensemble.config._name_or_path = "ensemble_uwo"
    callback = GoldRewardCallback(
        prompts[-4:],
        gold=gold,
        proxy=(ensemble, proxies[0][1]),
        eval_steps=2,
        samples_per_prompt=2,
        generation_config=GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.0, top_k=0, top_p=1.0),
    )
    trainer = RLOOTrainer(
        model=rl_assets["policy"],
        reward_funcs=ensemble,
        args=config(RLOOConfig, tmp_path, max_steps=4, learning_rate=5e-3, beta=0.0),
        train_dataset=Dataset.from_dict({"prompt": prompts[:16]}),
        processing_class=policy_tokenizer,
        reward_processing_classes=proxies[0][1],
        callbacks=[callback],
    )
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert "rewards/ensemble_uwo/mean" in train_logs[0]
    out = tmp_path / "out"
    with open(out / "overoptimization.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert float(rows[0]["kl"]) == pytest.approx(0.0, abs=1e-6)  # the policy is its own reference at step 0
    assert float(rows[-1]["kl"]) > 1e-3  # it moved
    assert all(r["source"] == "rl" and r["proxy"] == "ensemble_uwo" for r in rows)
    # Recorded proxy rewards are the ensemble's scores (the ensemble really scored the samples).
    assert len({r["proxy_reward"] for r in rows}) == 3
    assert (out / "overoptimization.png").stat().st_size > 5000
    assert (out / "overoptimization_fits.json").is_file()
    assert any("gold/reward" in h for h in trainer.state.log_history)


def test_gold_callback_kl_estimator(rl_assets, policy_tokenizer):
    """The full-distribution KL is 0 for identical models and, for 1-token responses, equals the exact KL."""
    from dmoerm_trl.rl.gold_callback import sequence_kl

    policy = AutoModelForCausalLM.from_pretrained(rl_assets["policy"]).eval()
    reference = AutoModelForCausalLM.from_pretrained(rl_assets["policy"]).eval()
    batch = policy_tokenizer(["hello there", "What is the capital of France?"], padding=True, return_tensors="pt")
    sequences = torch.cat([batch["input_ids"], torch.tensor([[7], [9]])], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.ones(2, 1, dtype=torch.long)], dim=1)
    prompt_length, response_mask = batch["input_ids"].shape[1], torch.ones(2, 1, dtype=torch.long)
    full, k1 = sequence_kl(policy, reference, sequences, mask, prompt_length, response_mask)
    assert torch.allclose(full, torch.zeros(2), atol=1e-6) and torch.allclose(k1, torch.zeros(2), atol=1e-6)
    with torch.no_grad():
        for p in policy.lm_head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    full, _ = sequence_kl(policy, reference, sequences, mask, prompt_length, response_mask)
    position_ids = (mask.cumsum(1) - mask).clamp(min=0)
    with torch.no_grad():
        p = policy(input_ids=sequences, attention_mask=mask, position_ids=position_ids).logits[:, -2].log_softmax(-1)
        q = (
            reference(input_ids=sequences, attention_mask=mask, position_ids=position_ids)
            .logits[:, -2]
            .log_softmax(-1)
        )
    torch.testing.assert_close(full, (p.exp() * (p - q)).sum(-1))
    assert (full > 0).all()


def test_gold_callback_reference_copy_is_frozen_even_with_a_patched_forward(rl_assets):
    """trl 1.16 wraps ``model.forward`` in a closure over the live model; the reference copy must not follow it."""
    import types

    policy = AutoModelForCausalLM.from_pretrained(rl_assets["policy"])
    original_forward = policy.forward
    policy.forward = types.MethodType(lambda self, *a, **k: original_forward(*a, **k), policy)
    callback = GoldRewardCallback(
        ["hi"],
        gold=lambda prompts, completions, **kw: [0.0] * len(completions),
        proxy=lambda prompts, completions, **kw: [0.0] * len(completions),
    )
    callback._setup_reference(policy)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = callback._own_ref(input_ids=ids).logits.clone()
        for parameter in policy.parameters():
            parameter.add_(0.1)
        assert not torch.allclose(policy(input_ids=ids).logits, before)
        torch.testing.assert_close(callback._own_ref(input_ids=ids).logits, before)


def test_gold_callback_uses_the_peft_base_as_reference(tmp_path, rl_assets, proxies, policy_tokenizer, prompts):
    from peft import LoraConfig

    callback = GoldRewardCallback(
        prompts[-2:],
        gold=lambda prompts, completions, **kw: [float(len(c)) for c in completions],
        proxy=lambda prompts, completions, **kw: [1.0] * len(completions),
        eval_steps=2,
        samples_per_prompt=2,
        generation_config=GenerationConfig(max_new_tokens=6, do_sample=True, top_k=0, top_p=1.0),
    )
    trainer = GRPOTrainer(
        model=rl_assets["policy"],
        reward_funcs=length_penalty,
        args=config(GRPOConfig, tmp_path, learning_rate=5e-2),
        train_dataset=Dataset.from_dict({"prompt": prompts[:8]}),
        processing_class=policy_tokenizer,
        callbacks=[callback],
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    assert callback._own_ref is None  # no copy: the adapters are disabled for the reference
    kls = [r["kl"] for r in callback.records]
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 0
