"""Prompt templates (EN, the paper's ZH, files) and lenient verdict parsing."""

from __future__ import annotations

import json

import pytest

from dmoerm_trl.data import load_category_spec
from dmoerm_trl.labeling.prompts import (
    TemplateError,
    load_template,
    parse_joint_verdict,
    parse_pairwise_verdict,
    render_conversation,
)

PAPER = load_category_spec("paper")
MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
]


@pytest.mark.parametrize(
    "answer, verdict",
    [
        ("1", 1),
        ("2", 2),
        (" **2** ", 2),
        ("[[1]]", 1),
        ("2.", 2),
        ('{"better": 2}', 2),
        ("<think>1? 2?</think>1", 1),
        ("Response 1 is better than Response 2.", 1),
        ("Response 2 is better than Response 1", 2),
        ("Response 1 is worse than Response 2.", 2),
        ("Response 1 is not as good.", 2),
        ("I prefer Response 2.", 2),
        ("The better response is 1.", 1),
        ("Answer: 2", 2),
        ("Overall, Response 2 wins.", 2),
        ("Response 2.", 2),
        ("回复1更好", 1),
        ("回复2比回复1更好。", 2),
        ("回复1和回复2相比，回复2更好", 2),
        ("回复2更差", 1),
        ("Both are equally good.", None),
        ("1 and 2 tie", None),
        ("12", None),
        ("", None),
        (None, None),
        ("Response 1 is better. No wait, Response 2 is better.", None),
    ],
)
def test_pairwise_verdicts_are_read_leniently(answer, verdict):
    assert parse_pairwise_verdict(answer) == verdict


def test_joint_verdicts_json_fenced_lenient_and_aliases():
    capabilities = ["correctness", "logic", "depth_of_knowledge"]
    assert parse_joint_verdict('{"correctness": 1, "logic": 2, "depth_of_knowledge": "Response 2"}', capabilities) == {
        "correctness": 1,
        "logic": 2,
        "depth_of_knowledge": 2,
    }
    assert parse_joint_verdict('Sure!\n```json\n{"correctness": "1", "logic": "tie"}\n```', capabilities) == {
        "correctness": 1,
        "logic": None,
        "depth_of_knowledge": None,
    }
    assert parse_joint_verdict("correctness: 2\n- Logic: response 1\ndepth of knowledge = 1", capabilities) == {
        "correctness": 2,
        "logic": 1,
        "depth_of_knowledge": 1,
    }
    assert parse_joint_verdict('{"verdicts": {"logic": 2}}', capabilities)["logic"] == 2
    assert parse_joint_verdict("no idea", capabilities) == dict.fromkeys(capabilities)
    assert parse_joint_verdict(None, capabilities) == dict.fromkeys(capabilities)
    zh = load_template("joint", "zh").json_keys(["correctness", "logic"], PAPER)
    assert parse_joint_verdict('{"正确性": 2, "逻辑性": 1}', zh) == {"correctness": 2, "logic": 1}


def test_english_templates_render_every_turn_and_are_injection_safe():
    template = load_template("per_capability", "en")
    messages = template.render(
        prompt=MULTI_TURN, response_1="Four {response_2}", response_2="Five", capabilities=["correctness"], spec=PAPER
    )
    system, user = messages
    assert system["role"] == "system" and user["role"] == "user"
    assert "Capability: correctness (is factually correct)" in user["content"]
    assert "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: 2+2?" in user["content"]
    assert "[Response 1]\nFour {response_2}\n[End of Response 1]" in user["content"]  # not substituted
    joint = load_template("joint", "en").render(
        prompt=MULTI_TURN[1:2], response_1="a", response_2="b", capabilities=PAPER.categories["chitchat"], spec=PAPER
    )
    content = joint[-1]["content"]
    assert "- proactivity: moves the conversation forward" in content
    example = json.loads(content.rsplit("\n", 1)[1])
    assert list(example) == PAPER.categories["chitchat"] and set(example.values()) == {1, 2}
    assert render_conversation(MULTI_TURN[1:2]) == "Hi"


def test_the_chinese_template_is_the_papers_prompt():
    template = load_template("per_capability", "zh")
    (message,) = template.render(
        prompt=[{"role": "user", "content": "推荐一本书"}],
        response_1="甲",
        response_2="乙",
        capabilities=["content_richness"],
        spec=PAPER,
    )
    assert (
        message["content"] == "给定提问和两个回复，判断回复1和回复2在【内容丰富性】方面哪个更好。\n"
        "【提问】：推荐一本书\n【回复1】：甲\n【回复2】：乙"
    )
    multi = template.render(prompt=MULTI_TURN[1:], response_1="4", response_2="5", capabilities=["logic"], spec=PAPER)
    assert "【提问】：用户：Hi\n助手：Hello!\n用户：2+2?\n【回复1】：4" in multi[0]["content"]
    joint = load_template("joint", "zh").render(
        prompt=MULTI_TURN[1:2], response_1="4", response_2="5", capabilities=["correctness", "logic"], spec=PAPER
    )
    assert "- 正确性\n- 逻辑性" in joint[0]["content"] and '{"正确性": 1, "逻辑性": 2}' in joint[0]["content"]
    assert template.sha256 != load_template("per_capability", "en").sha256


@pytest.mark.parametrize(
    "text, message",
    [
        ("mode: per_capability\nuser: '{conversation} {response_1} {response_2}'\n", "lacks"),
        (
            "mode: per_capability\nuser: '{conversation} {response_1} {response_2} {capability} {rubric}'\n",
            "unknown placeholder(s) ['rubric']",
        ),
        ("mode: joint\nuser: '{conversation} {response_1} {response_2} {capability_list}'\n", "a joint template"),
        ("system: hi\n", "needs a 'user' message"),
        ("user: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_template_files_are_named_and_explained(tmp_path, text, message):
    path = tmp_path / "template.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        load_template("per_capability", "en", path)
    assert str(path) in str(info.value) and message in str(info.value)
