"""Bad input before RL: tokenizer mismatch, reward model in the wrong mode, wrong shapes, too-long prompts."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from dmoerm_trl.rl.checks import (
    check_prompt_lengths,
    check_reward_logits,
    check_reward_model_ready,
    check_reward_values,
    check_tokenizers_match,
)
from dmoerm_trl.testing_utils import make_tiny_bert_tokenizer, make_tiny_tokenizer


def test_same_tokenizer_passes(policy_tokenizer):
    check_tokenizers_match(policy_tokenizer, make_tiny_tokenizer())


def test_tokenizer_with_other_vocabulary_is_rejected(policy_tokenizer):
    with pytest.raises(ValueError, match="vocabulary sizes .* GRPO/RLOO"):
        check_tokenizers_match(policy_tokenizer, make_tiny_bert_tokenizer())


def test_tokenizer_with_same_size_but_other_ids_is_rejected(policy_tokenizer):
    # Same vocabulary size, same special tokens, but trained on a different corpus: ids differ on a probe.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(policy_tokenizer), special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["zebra zebra quokka " * 50, "lorem ipsum dolor sit amet " * 80] * 20, trainer=trainer)
    other = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    if len(other) != len(policy_tokenizer):  # BPE stops early on a small corpus: pad the vocabulary to the same size
        other.add_tokens([f"<extra_{i}>" for i in range(len(policy_tokenizer) - len(other))])
    assert len(other) == len(policy_tokenizer)
    with pytest.raises(ValueError, match="differ on the probe"):
        check_tokenizers_match(policy_tokenizer, other)


def test_dmoerm_left_in_a_training_stage_is_rejected(dmoerm):
    model, _ = dmoerm
    model.set_training_stage("router")
    with pytest.raises(ValueError, match="training stage 'router'.*set_training_stage\\(None\\)"):
        check_reward_model_ready(model)
    model.set_training_stage(None)
    check_reward_model_ready(model, for_ppo=True)


def test_two_label_classifier_is_rejected(rl_assets):
    model = AutoModelForSequenceClassification.from_pretrained(rl_assets["policy"], num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2"):
        check_reward_model_ready(model)


def test_bert_classifier_fails_the_ppo_contract_but_not_the_text_paths(tiny_bert_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_path, num_labels=1)
    check_reward_model_ready(model)  # fine for GRPO/RLOO and best-of-n
    with pytest.raises(ValueError, match="PPO's reward contract"):
        check_reward_model_ready(model, for_ppo=True)


def test_reward_shapes():
    assert check_reward_logits(torch.ones(3, 1), 3).shape == (3,)
    with pytest.raises(ValueError, match=r"shape \(3, 2\).*router"):
        check_reward_logits(torch.ones(3, 2), 3)
    assert check_reward_values([1, 2.5, None], 3).tolist()[:2] == [1.0, 2.5]
    with pytest.raises(ValueError, match=r"returned shape \(2,\) for 3 completions"):
        check_reward_values([1.0, 2.0], 3, name="gold")
    with pytest.raises(ValueError, match="one float per completion"):
        check_reward_values(torch.ones(3, 2), 3)
    with pytest.raises(ValueError, match="not a list of numbers"):
        check_reward_values(["a", "b", "c"], 3)


def test_prompt_length_check_names_the_prompt():
    check_prompt_lengths([10, 20], max_new_tokens=8, limit=32)
    with pytest.raises(ValueError, match="prompt 1 has 30 tokens \\+ max_new_tokens=8 > 32"):
        check_prompt_lengths([10, 30, 40], max_new_tokens=8, limit=32)
