"""What the RL recipes and ``dmoerm bon|grpo|rloo|ppo`` read from the user: prompt files (every format the docs name,
and a bad record named by its line) and reward models (a checkpoint without a reward head is refused, except as PPO's
value model, which PPO trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dmoerm_trl.rl.recipe_args import load_prompts, load_reward_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHAT = [{"role": "user", "content": "What is 2+2?"}]


def write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return str(path)


def test_prompt_files_in_every_documented_format_give_the_same_prompts(tmp_path):
    records = [{"prompt": "Say hi."}, {"prompt": CHAT}, {"prompt": "Say hi."}]  # the duplicate is dropped
    expected = ["Say hi.", CHAT]
    assert load_prompts(write_jsonl(tmp_path / "p.jsonl", records)) == expected
    (tmp_path / "p.json").write_text(json.dumps(records), encoding="utf-8")
    assert load_prompts(str(tmp_path / "p.json")) == expected
    (tmp_path / "p.csv").write_text("question\nSay hi.\nWhat is 2+2?\n", encoding="utf-8")
    assert load_prompts(str(tmp_path / "p.csv"), prompt_column="question") == ["Say hi.", "What is 2+2?"]
    # blank lines are not records; another column name works with prompt_column
    (tmp_path / "q.jsonl").write_text('{"question": "Say hi."}\n\n{"question": "Bye."}\n', encoding="utf-8")
    assert load_prompts(str(tmp_path / "q.jsonl"), prompt_column="question") == ["Say hi.", "Bye."]


def test_a_preference_file_without_a_prompt_column_gives_its_prompts():
    # mtmc-rlhf ranked lists have src/tgt, no prompt: the prompts are the conversations before the responses
    prompts = load_prompts(str(FIXTURES / "mtmc_tiny.jsonl"))
    assert prompts and all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts)
    assert len({repr(p) for p in prompts}) == len(prompts)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "holds no records"),
        ("\n\n", "holds no records"),
        ('{"prompt": "hi"}\n{"prompt": "x"\n', "line 2: not valid JSON"),
        ('{"prompt": "hi"}\n{"other": "x"}\n', "line 2: no 'prompt' field"),
        ('{"prompt": "hi"}\n{"prompt": "  "}\n', "line 2: empty 'prompt'"),
        ('{"prompt": "hi"}\n{"prompt": []}\n', "line 2: empty 'prompt'"),
        ('{"prompt": "hi"}\n{"prompt": 5}\n', "line 2: 'prompt' is not text but int"),
        ('{"prompt": "hi"}\n{"prompt": [{"role": "user"}]}\n', "line 2: 'prompt' message 0 is not a"),
        ('{"prompt": "hi"}\n{"prompt": ["hello"]}\n', "line 2: 'prompt' message 0 is not a"),
        ('{"prompt": "hi"}\n["a", "list"]\n', "line 2: a list, not a JSON object"),
        ('{"text": "hi"}\n', "has no 'prompt' field (fields: ['text'])"),
    ],
)
def test_a_bad_prompt_file_is_one_error_naming_the_file_and_line(tmp_path, content, expected):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_prompts(str(path))
    message = str(error.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_prompt_file_paths_that_are_not_prompt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="is a folder"):
        load_prompts(str(tmp_path))
    (tmp_path / "prompts.txt").write_text("Say hi.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported prompt file type '.txt'"):
        load_prompts(str(tmp_path / "prompts.txt"))


def test_a_checkpoint_without_a_reward_head_is_refused_but_can_be_a_value_model(rl_assets, tmp_path):
    # Loaded with a random head, the policy "scored" best-of-n and GRPO without a word but a log warning.
    with pytest.raises(ValueError, match="gold_model_path .* is not a reward model .*LlamaForCausalLM"):
        load_reward_model(rl_assets["policy"], flag="gold_model_path")
    value_model, _ = load_reward_model(rl_assets["policy"], flag="value_model_path", new_head=True)
    assert value_model.config.num_labels == 1
    (tmp_path / "notes.txt").write_text("not a model", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_reward_model(str(tmp_path))
    with pytest.raises(ValueError, match="reward model path org-typo/no-such-rm: cannot be loaded"):
        load_reward_model("org-typo/no-such-rm")
    model, tokenizer = load_reward_model(rl_assets["dmoerm"])  # the real thing still loads
    assert model.config.model_type == "dmoerm" and tokenizer is not None
