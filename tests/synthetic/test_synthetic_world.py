"""The world: attributes measured from text equal the ones the generator planned; prompts are recognised; the gold
formulas weigh capabilities differently per category."""

from __future__ import annotations

import random

import pytest

from dmoerm_trl.synthetic.categories import CATEGORY_WORLDS
from dmoerm_trl.synthetic.text_features import EMPATHY_MARKERS, REASONING_CONNECTIVES, VIVID_WORDS, contains_phrase
from dmoerm_trl.synthetic.world import PromptInfo, UnknownPromptError


@pytest.mark.parametrize("category", sorted(CATEGORY_WORLDS))
def test_attributes_recomputed_from_text_equal_the_planned_ones(synthetic_world, category):
    world = synthetic_world.worlds[category]
    rng = random.Random(category)
    seen_levels = set()
    for _ in range(1500):
        conversation = world.sample_conversation(rng.choice(world.units()), rng, multi_turn_probability=0.3)
        plan = world.sample_plan(rng)
        text = world.render(conversation, plan, rng)
        assert text.strip(), plan
        assert world.features(conversation.item, text) == world.planned_features(plan), (plan, text)
        # the world recognises the conversation (also multi-turn, whatever the phrasing)
        assert synthetic_world.identify(conversation.messages()) == PromptInfo(category, conversation.item)
        scores = synthetic_world.capability_scores(conversation.messages(), text)
        assert list(scores) == list(world.capabilities) and all(0.0 <= v <= 1.0 for v in scores.values())
        seen_levels |= {(name, value) for name, value in scores.items()}
    # every capability takes at least two levels in generated data (else it could not be learned)
    for capability in world.capabilities:
        assert len({v for name, v in seen_levels if name == capability}) >= 2, capability


def test_catalogue_sentences_carry_no_accidental_markers():
    """Supporting sentences must not move another capability (the round trip above samples; this is exhaustive)."""
    from dmoerm_trl.synthetic.categories import chitchat, objective_qa, roleplay, text_creation

    for fact in objective_qa.FACTS:
        assert all(
            contains_phrase(fact.question, k)
            and contains_phrase(fact.statement, k)
            and contains_phrase(fact.topic_phrase, k)
            for k in fact.keywords
        ), fact.key
        aliases = [*fact.answer, *(a for wrong in fact.wrong for a in wrong)]
        for sentence in (*fact.details, fact.reason):
            forbidden = [*fact.keywords, *aliases, *EMPATHY_MARKERS]
            assert not [p for p in forbidden if contains_phrase(sentence, p)], (fact.key, sentence)
        assert not any(contains_phrase(d, c) for d in fact.details for c in REASONING_CONNECTIVES), fact.key
    for situation in chitchat.SITUATIONS:
        assert all(contains_phrase(situation.reaction, k) for k in situation.keywords), situation.key
        for sentence in (*situation.details, situation.question):
            assert not [k for k in situation.keywords if contains_phrase(sentence, k)], (situation.key, sentence)
    for task in text_creation.TASKS:
        assert all(contains_phrase(task.lines[0], k) for k in task.keywords), task.key
        assert not [w for line in task.lines for w in VIVID_WORDS if contains_phrase(line, w)], task.key
        assert text_creation.TextCreation().off_topic_tasks(task), task.key
    signatures = {word for persona in roleplay.PERSONAS for word in persona.signature}
    for persona in roleplay.PERSONAS:
        for line in persona.lines:
            assert sum(contains_phrase(line, w) for w in persona.signature) == 1, (persona.key, line)
    for trouble in roleplay.TROUBLES:
        for sentence in (*trouble.details, trouble.question):
            assert not [w for w in signatures if contains_phrase(sentence, w)], (trouble.key, sentence)


def test_gold_formulas_differ_between_categories(synthetic_world):
    """More informative sentences raise the gold of a correct QA answer and lower it in chit-chat."""
    qa = "What is the capital of France?"
    bare = "The capital of France is Paris."
    detailed = bare + " The city sits on the banks of the Seine. About two million people live within its city limits."
    assert synthetic_world.gold(qa, detailed) > synthetic_world.gold(qa, bare)
    wrong = "The capital of France is Lyon."
    wrong_detailed = wrong + " The city sits on a river."
    assert synthetic_world.gold(qa, wrong_detailed) < synthetic_world.gold(qa, wrong)  # the interaction
    chat = "I lost my phone on the bus today."
    short = "I'm sorry you're dealing with this. Losing a phone is such a hassle these days."
    long = short + " Bus companies often keep a lost property office. Location tracking might show where it is."
    assert synthetic_world.gold(chat, long) < synthetic_world.gold(chat, short)
    # correctness dominates objective QA, empathy dominates chit-chat
    assert synthetic_world.gold(qa, "Paris.") > synthetic_world.gold(qa, "I'm sorry. " + wrong_detailed)
    assert synthetic_world.gold(chat, "That sounds really hard.") > synthetic_world.gold(chat, long[36:])
    described = synthetic_world.describe()
    assert len({entry["gold_formula"] for entry in described.values()}) == len(described)


def test_unknown_prompts_fail_clearly_and_flat_texts_split(synthetic_world):
    with pytest.raises(UnknownPromptError, match="not a conversation of the synthetic world"):
        synthetic_world.gold("Tell me a joke about penguins.", "No.")
    assert synthetic_world.find([{"role": "user", "content": "Who are you?"}]) is None
    text = (
        "<|im_start|>user\nLet's play a role-play game. You are Merlin, a wise old wizard. Stay in character."
        "<|im_end|>\n<|im_start|>assistant\nAh, a visitor!<|im_end|>\n<|im_start|>user\n"
        "I have a big exam tomorrow and I'm scared I'll fail.<|im_end|>\n<|im_start|>assistant\n"
        "No spell is needed to see that you are troubled. Which subject is it?<|im_end|>\n"
    )
    conversation, response = synthetic_world.split_text(text)
    assert response == "No spell is needed to see that you are troubled. Which subject is it?"
    assert synthetic_world.identify(conversation) == PromptInfo("roleplay", "wizard")
    with pytest.raises(UnknownPromptError, match="No user turn"):
        synthetic_world.split_text("User: hello\nAssistant: hi")


def test_category_spec_round_trips_through_yaml(synthetic_world, tmp_path):
    from dmoerm_trl.data import load_category_spec

    path = tmp_path / "categories.yaml"
    path.write_text(synthetic_world.category_yaml(), encoding="utf-8")
    spec = load_category_spec(path)
    assert spec.categories == synthetic_world.categories
    assert spec.resolve("客观知识问答") == "objective_qa" and spec.resolve("角色扮演") == "roleplay"
    assert spec.capability_name("empathy_ability", "zh") == "共情能力"
    assert "vivid" in spec.capability_description("expressiveness")
