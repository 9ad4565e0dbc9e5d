"""The gold reward callable: every input form the RL code uses, the shapes it returns, and its use as a reward."""

from __future__ import annotations

import math

import pytest
import torch

from dmoerm_trl.synthetic import GoldReward
from dmoerm_trl.synthetic.world import UnknownPromptError

QA = [
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello! How can I help you today?"},
    {"role": "user", "content": "Quick question: What is the capital of Japan?"},
]
GOOD, BAD = "The capital of Japan is Tokyo. It was known as Edo before 1868.", "Great question! It is Osaka."


def test_trl_signature_pairs_and_flat_texts_agree(tiny_tokenizer):
    gold = GoldReward()
    scores = gold(prompts=[QA, QA], completions=[GOOD, BAD])
    assert isinstance(scores, list) and len(scores) == 2 and all(isinstance(s, float) for s in scores)
    assert scores[0] > scores[1]
    # conversational completions (what TRL passes for chat prompts), pairs, and text prompts give the same numbers
    assert gold(prompts=[QA], completions=[[{"role": "assistant", "content": GOOD}]]) == scores[:1]
    assert gold([(QA, GOOD), (QA, BAD)]) == scores
    text_prompt = "\n".join(m["content"] for m in QA)
    assert gold(prompts=[text_prompt], completions=[BAD]) == scores[1:]
    # flat texts: a real chat template (ChatML) around prompt and response, and a plain concatenation
    templated = [
        tiny_tokenizer.apply_chat_template(QA + [{"role": "assistant", "content": c}], tokenize=False)
        for c in (GOOD, BAD)
    ]
    assert gold(templated) == scores
    assert gold.score_texts([text_prompt + "\n" + GOOD + "</s>"]) == scores[:1]
    assert gold(prompts=[], completions=[]) == []


def test_scores_match_capabilities_and_categories():
    gold = GoldReward()
    prompts = [
        QA,
        "I lost my phone on the bus today.",
        "Write a short poem about rain.",
        ("Pretend you are Merlin, a wise old wizard, and answer in character.\nI keep forgetting to water my plants."),
    ]
    completions = [
        GOOD,
        "That sounds really hard. Did you call the bus company yet?",
        ("The golden rain taps on the roof\nPuddles gather silver reflections\nUmbrellas bloom on wild streets"),
        "No spell is needed to see that you are troubled. I hear you. Which plants do you have?",
    ]
    assert gold.categories_of(prompts) == ["objective_qa", "chitchat", "text_creation", "roleplay"]
    capabilities = gold.capability_scores(prompts, completions)
    assert capabilities[2] == {
        "intent_conformity": 1.0,
        "expressiveness": 0.75,
        "readability": 1.0,
        "content_richness": 0.75,
    }
    assert capabilities[3]["character_setting_and_emotional_investment"] == pytest.approx(1 / 3)
    scores = gold(prompts=prompts, completions=completions)
    for category, capability_scores, score in zip(gold.categories_of(prompts), capabilities, scores):
        assert score == pytest.approx(gold.world.worlds[category].gold(capability_scores), abs=1e-6)


def test_unknown_prompts_raise_or_give_nan_and_bad_inputs_are_named():
    with pytest.raises(UnknownPromptError, match="not a conversation of the synthetic world"):
        GoldReward()(prompts=["What is love?"], completions=["Baby don't hurt me."])
    scores = GoldReward(on_unknown="nan")(prompts=["What is love?", QA], completions=["Hm.", GOOD])
    assert math.isnan(scores[0]) and not math.isnan(scores[1])
    assert math.isnan(GoldReward(on_unknown="nan")(["no conversation here"])[0])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        GoldReward()(prompts=[QA, QA], completions=[GOOD])
    with pytest.raises(TypeError, match="pair 0"):
        GoldReward()([(QA, GOOD, "extra")])
    with pytest.raises(ValueError, match="on_unknown"):
        GoldReward(on_unknown="zero")


def test_usable_as_the_rl_gold_reward():
    from dmoerm_trl.rl import RewardScorer, best_of_n_curve

    gold = GoldReward()
    scorer = RewardScorer(gold)
    assert scorer.name == "synthetic_gold"
    rewards = scorer([QA, QA, QA], [GOOD, BAD, "Tokyo."])
    assert rewards.shape == (3,) and rewards.dtype == torch.float32
    assert rewards.tolist() == pytest.approx(gold(prompts=[QA] * 3, completions=[GOOD, BAD, "Tokyo."]))
    # best-of-n with the gold as its own proxy: the expected gold grows with n
    candidates = [GOOD, BAD, "Tokyo.", "It is Kyoto.", "The capital of Japan is either Tokyo or Kyoto."]
    values = torch.tensor([gold(prompts=[QA] * 5, completions=candidates)])
    records = best_of_n_curve(values, values, ns=[1, 2, 4])
    assert [r["n"] for r in records] == [1, 2, 4]
    assert records[0]["gold_reward"] < records[1]["gold_reward"] < records[2]["gold_reward"]
