"""The capability judge: verdicts from measured attributes with a known flip rate, every built-in prompt template
understood, and the real labeler (openai client over HTTP) getting the labels and consistency rates predicted."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest

from dmoerm_trl.data import load_category_spec, load_preference_pairs
from dmoerm_trl.labeling import LabelingConfig, run_labeling
from dmoerm_trl.labeling.prompts import load_template, parse_joint_verdict, parse_pairwise_verdict
from dmoerm_trl.synthetic.judge import CapabilityJudge, capability_judge_server, expected_consistency


def _comparisons(world, per_category: int, seed: int = 0):
    """(conversation messages, category, first, second) from freshly sampled responses."""
    rng = random.Random(seed)
    for name, category in world.worlds.items():
        for _ in range(per_category):
            conversation = category.sample_conversation(rng.choice(category.units()), rng, 0.3)
            texts = [category.render(conversation, category.sample_plan(rng), rng) for _ in range(2)]
            yield conversation.messages(), name, texts[0], texts[1]


@pytest.mark.parametrize("flip_rate", [0.1, 0.25])
def test_verdicts_flip_at_the_configured_rate_independently_per_order(synthetic_world, flip_rate):
    judge = CapabilityJudge(synthetic_world, flip_rate=flip_rate, seed=3)
    wrong, decided, both_flipped, pairs, tie_answers = 0, 0, 0, 0, []
    for prompt, category, first, second in _comparisons(synthetic_world, 300):
        first_scores = synthetic_world.capability_scores(prompt, first)
        second_scores = synthetic_world.capability_scores(prompt, second)
        for capability in synthetic_world.categories[category]:
            a, b = first_scores[capability], second_scores[capability]
            forward, backward = (
                judge.verdict(prompt, capability, first, second),
                judge.verdict(prompt, capability, second, first),
            )
            assert forward == judge.verdict(prompt, capability, first, second)  # deterministic
            if a == b:
                tie_answers += [forward, backward]
                continue
            truth_forward, truth_backward = (1, 2) if a > b else (2, 1)
            decided += 2
            wrong += (forward != truth_forward) + (backward != truth_backward)
            pairs += 1
            both_flipped += forward != truth_forward and backward != truth_backward
    rate = wrong / decided
    assert abs(rate - flip_rate) < 4 * math.sqrt(flip_rate * (1 - flip_rate) / decided)
    assert abs(both_flipped / pairs - flip_rate**2) < 4 * math.sqrt(flip_rate**2 / pairs) + 0.005  # independent orders
    # a tie: position bias ("1") unless flipped
    assert abs(tie_answers.count(2) / len(tie_answers) - flip_rate) < 0.03
    other_seed = CapabilityJudge(synthetic_world, flip_rate=flip_rate, seed=4)
    assert [other_seed.is_flipped("x", "c", str(i), "y") for i in range(400)] != [
        judge.is_flipped("x", "c", str(i), "y") for i in range(400)
    ]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_builtin_template_is_answered_from_the_attributes(synthetic_world, language):
    judge = CapabilityJudge(synthetic_world, flip_rate=0.0, style="sentence")
    spec = synthetic_world.category_spec()
    per_capability, joint = load_template("per_capability", language), load_template("joint", language)
    checked = 0
    for prompt, category, first, second in _comparisons(synthetic_world, 12, seed=1):
        capabilities = synthetic_world.categories[category]
        truth = {}
        for capability in capabilities:
            a = synthetic_world.capability_scores(prompt, first)[capability]
            b = synthetic_world.capability_scores(prompt, second)[capability]
            truth[capability] = 1 if a >= b else 2  # ties: the first shown
        for capability in capabilities:
            messages = per_capability.render(
                prompt=prompt, response_1=first, response_2=second, capabilities=[capability], spec=spec
            )
            assert parse_pairwise_verdict(judge({"messages": messages})) == truth[capability]
            checked += 1
        messages = joint.render(
            prompt=prompt, response_1=first, response_2=second, capabilities=capabilities, spec=spec
        )
        assert parse_joint_verdict(judge({"messages": messages}), joint.json_keys(capabilities, spec)) == truth
    assert judge.stats["answered"] == checked + 48 and not judge.stats["unparsed"]
    unrelated = {"messages": [{"role": "user", "content": "Which is better, A or B?"}]}
    assert parse_pairwise_verdict(judge(unrelated)) is None
    assert judge.stats["unparsed"] == 1


def _predicted_labels(judge, pairs, spec):
    """What the labeler must keep: both orders agree (the same rule as CapabilityLabeler)."""
    labels, judged = set(), 0
    for row in pairs:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        for capability in spec.categories[row["category"]]:
            forward = judge.verdict(row["prompt"], capability, chosen, rejected)
            backward = judge.verdict(row["prompt"], capability, rejected, chosen)
            judged += 1
            if (forward == 1) == (backward == 2):
                better, worse = (chosen, rejected) if forward == 1 else (rejected, chosen)
                labels.add((row["category"], capability, better, worse))
    return labels, judged


def test_real_labeler_over_http_in_both_modes(small_synthetic_data, synthetic_world, tmp_path):
    spec = load_category_spec(small_synthetic_data["categories"])
    pairs = load_preference_pairs(small_synthetic_data["train"], categories=spec)
    predicted, judged = _predicted_labels(CapabilityJudge(synthetic_world, flip_rate=0.1, seed=0), pairs, spec)
    ties = sum(
        synthetic_world.capability_scores(row["prompt"], row["chosen"][0]["content"])[capability]
        == synthetic_world.capability_scores(row["prompt"], row["rejected"][0]["content"])[capability]
        for row in pairs
        for capability in spec.categories[row["category"]]
    )
    results = {}
    for mode, language in (("per_capability", "en"), ("joint", "en"), ("joint", "zh")):
        with capability_judge_server(synthetic_world, flip_rate=0.1, seed=0) as server:
            config = LabelingConfig(
                data=small_synthetic_data["train"],
                categories=small_synthetic_data["categories"],
                output=str(tmp_path / f"{mode}-{language}"),
                model="synthetic-judge",
                base_url=server.base_url,
                mode=mode,
                language=language,
                progress=False,
                timeout=30,
            )
            result = run_labeling(config)
            stats = dict(server.answer.stats)
        summary = result.summary
        assert summary["complete"] and summary["calls"] == summary["requests"] == stats["answered"]
        assert not stats.get("unparsed") and not stats.get("unknown_capability")
        got = {
            (r["category"], r["capability"], r["chosen"][0]["content"], r["rejected"][0]["content"])
            for r in result.labels
        }
        assert got == predicted, (mode, language)
        tallies = [t for caps in summary["per_capability"].values() for t in caps.values()]
        labeled = sum(t["labeled"] for t in tallies)
        assert labeled == len(predicted) and sum(t["undecided"] for t in tallies) == 0
        assert labeled + sum(t["inconsistent"] for t in tallies) == judged
        results[(mode, language)] = summary
    requests_per_pair = {k: s["requests_per_pair"] for k, s in results.items()}
    assert requests_per_pair[("joint", "en")] == 2.0 < requests_per_pair[("per_capability", "en")]
    # the consistency rate the swap filter shows is the one the flip rate and the ties predict
    consistency = len(predicted) / judged
    expected = expected_consistency(0.1, ties / judged)
    assert abs(consistency - expected) < 4 * math.sqrt(expected * (1 - expected) / judged)


def test_labels_are_mostly_right_about_the_capability_truth(small_synthetic_data, synthetic_world):
    spec = load_category_spec(small_synthetic_data["categories"])
    pairs = load_preference_pairs(small_synthetic_data["train"], categories=spec)
    predicted, _ = _predicted_labels(CapabilityJudge(synthetic_world, flip_rate=0.1, seed=0), pairs, spec)
    prompts = {(row["chosen"][0]["content"], row["rejected"][0]["content"]): row["prompt"] for row in pairs}
    prompts |= {(b, a): p for (a, b), p in prompts.items()}
    right = wrong = 0
    for category, capability, better, worse in predicted:
        scores = [synthetic_world.capability_scores(prompts[better, worse], t)[capability] for t in (better, worse)]
        right += scores[0] > scores[1]
        wrong += scores[0] < scores[1]
    # kept labels on differing capabilities are right with probability 0.81 / 0.82 (~0.99)
    assert right / (right + wrong) > 0.95


@pytest.mark.slow
def test_standalone_judge_process_serves_the_openai_client():
    import openai

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "dmoerm_trl.synthetic.judge", "--port", "0", "--flip-rate", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:"), line
        client = openai.OpenAI(base_url=line.split()[1], api_key="unused", max_retries=0)
        spec = load_category_spec({"chitchat": ["empathy_ability"]})
        messages = load_template("per_capability", "en").render(
            prompt=[{"role": "user", "content": "I lost my phone on the bus today."}],
            response_1="Okay.",
            response_2="I'm sorry you're dealing with this.",
            capabilities=["empathy_ability"],
            spec=spec,
        )
        answer = client.chat.completions.create(model="synthetic-judge", messages=messages, max_tokens=8)
        assert answer.choices[0].message.content == "2"
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and '"answered": 1' in out
