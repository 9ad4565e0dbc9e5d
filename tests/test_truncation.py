"""Over-long conversations keep their end (the response) everywhere a reward is computed, and are counted."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from dmoerm_trl import DMoERMForSequenceClassification
from dmoerm_trl.testing_utils import randomize_adapters
from dmoerm_trl.truncation import encode_keep_end, keep_end, keep_end_of_batch

LONG_PROMPT = "tell me about the weather " * 120  # several hundred tokens: over the tiny Llama's 256 positions


def conversation(answer: str, prompt: str = LONG_PROMPT) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama_path, tiny_tokenizer):
    model = DMoERMForSequenceClassification.from_backbone(
        tiny_llama_path, {"objective_qa": ["correctness", "logic"], "chitchat": ["empathy"]}, tokenizer=tiny_tokenizer
    )
    randomize_adapters(model)
    return model.eval(), tiny_tokenizer


def test_keep_end_keeps_the_leading_special_tokens_and_the_end():
    assert keep_end([101, 1, 2, 3, 4, 102], 4, keep_leading=1) == [101, 3, 4, 102]
    assert keep_end([1, 2, 3], 5) == [1, 2, 3]
    assert keep_end([1, 2, 3], None) == [1, 2, 3]


def test_encoder_special_tokens_stay_sane(tiny_bert_tokenizer):
    ids, truncated = encode_keep_end(tiny_bert_tokenizer, ["hello world " * 50, "hi"], 16, add_special_tokens=True)
    assert truncated == [True, False]
    assert len(ids[0]) == 16
    assert ids[0][0] == tiny_bert_tokenizer.cls_token_id and ids[0][-1] == tiny_bert_tokenizer.sep_token_id
    assert ids[0].count(tiny_bert_tokenizer.cls_token_id) == 1
    assert tiny_bert_tokenizer.truncation_side == "right"  # the user's tokenizer is not modified


def test_responses_differing_only_past_the_limit_get_different_rewards(model_and_tokenizer, caplog):
    model, tokenizer = model_and_tokenizer
    side_before = tokenizer.truncation_side
    yes, no, short = conversation("The answer is yes."), conversation("The answer is no."), conversation("Hi", "Hi")
    limit = model.config.max_position_embeddings
    assert len(tokenizer.apply_chat_template(yes, tokenize=False)) > limit  # characters; tokens checked below
    with caplog.at_level(logging.WARNING):
        results = model.compute_rewards([yes, no, short], tokenizer, batch_size=2)
    assert [r["truncated"] for r in results] == [True, True, False]
    assert results[0]["reward"] != pytest.approx(results[1]["reward"], abs=1e-7)
    assert "2 of 3 conversation(s) are longer than 256 tokens" in caplog.text
    assert tokenizer.truncation_side == side_before
    # The old behaviour (right truncation) would have cut both responses off and scored the same tokens.
    right = tokenizer(
        [tokenizer.apply_chat_template(c, tokenize=False) for c in (yes, no)],
        truncation=True,
        max_length=limit,
        add_special_tokens=False,
    )["input_ids"]
    assert right[0] == right[1]
    # The scored ids are the last `limit` tokens of the full conversation, and the forward on raw ids agrees.
    full = tokenizer(tokenizer.apply_chat_template(yes, tokenize=False), add_special_tokens=False)["input_ids"]
    assert len(full) > limit
    with torch.no_grad():
        direct = model(input_ids=torch.tensor([full[-limit:]])).logits[0, 0]
        raw = model(input_ids=torch.tensor([full])).logits[0, 0]  # over-long ids: forward keeps the end too
    assert float(direct) == pytest.approx(results[0]["reward"], abs=1e-5)
    assert float(raw) == pytest.approx(results[0]["reward"], abs=1e-5)


def test_keep_end_of_batch_with_right_padding():
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]])
    mask = (ids != 0).long()
    cut_ids, cut_mask, truncated = keep_end_of_batch(ids, mask, 3)
    assert cut_ids.tolist() == [[3, 4, 5], [0, 6, 7]] and cut_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert truncated.tolist() == [True, False]


def test_dmoerm_score_flags_and_counts_truncated_conversations(model_and_tokenizer, tiny_llama_path, tmp_path, capsys):
    from dmoerm_trl.cli import main

    model, _ = model_and_tokenizer
    model.save_pretrained(tmp_path / "model")
    data = tmp_path / "long.jsonl"
    lines = [conversation("The answer is yes."), conversation("The answer is no."), conversation("Hi", "Hi")]
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in lines))
    code = main(["score", "--model", str(tmp_path / "model"), "--input", str(data), "--tokenizer", tiny_llama_path])
    captured = capsys.readouterr()
    assert code == 0
    results = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["truncated"] for r in results] == [True, True, False]
    assert results[0]["reward"] != results[1]["reward"]
    assert "2 of 3 conversations were longer than 256 tokens" in captured.err


def test_reward_scorer_keeps_the_completion_and_counts(model_and_tokenizer):
    from dmoerm_trl.rl import RewardScorer

    model, tokenizer = model_and_tokenizer
    scorer = RewardScorer(model, tokenizer)
    prompts = [[{"role": "user", "content": LONG_PROMPT}]] * 2 + [[{"role": "user", "content": "Hi"}]]
    rewards = scorer(prompts, ["The answer is yes.", "The answer is no.", "Hello"])
    assert rewards[0] != rewards[1]
    assert scorer.num_truncated == 2 and scorer.num_scored == 3


def test_eval_prepare_pairs_truncates_left_and_counts(tiny_tokenizer):
    from datasets import Dataset

    from dmoerm_trl.evaluation import prepare_pairs

    prompt = [{"role": "user", "content": LONG_PROMPT}]
    pairs = Dataset.from_list(
        [
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": "yes"}],
                "rejected": [{"role": "assistant", "content": "no"}],
            },
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "chosen": [{"role": "assistant", "content": "Hello"}],
                "rejected": [{"role": "assistant", "content": "Go away"}],
            },
        ]
    )
    counts: dict = {}
    prepared = prepare_pairs(pairs, tiny_tokenizer, 64, "pairs", counts)
    assert len(prepared) == 2 and counts == {"pairs_truncated_left": 1}
    assert len(prepared[0]["chosen_ids"]) == 64 and prepared[0]["chosen_ids"] != prepared[0]["rejected_ids"]
    full = tiny_tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": "yes"}], tokenize=True, return_dict=True
    )["input_ids"]
    assert prepared[0]["chosen_ids"] == list(full[-64:])


def test_grpo_style_call_keeps_each_rows_end(model_and_tokenizer):
    # TRL GRPO/RLOO re-tokenize the texts (right padding, no special tokens, no truncation) and call the model under
    # inference_mode, left in training mode: over-long rows keep their ends, short rows are untouched.
    model, tokenizer = model_and_tokenizer
    conversations = (conversation("The answer is yes."), conversation("The answer is no."), conversation("Hi", "Hi"))
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    assert batch["input_ids"].shape[1] > model.config.max_position_embeddings
    model.train()
    try:
        with torch.inference_mode():
            rewards = model(**batch).logits[:, 0].tolist()
    finally:
        model.eval()
    expected = [r["reward"] for r in model.compute_rewards(texts, tokenizer)]
    assert rewards == pytest.approx(expected, abs=1e-5)
    assert rewards[0] != pytest.approx(rewards[1], abs=1e-7)


def test_no_texts_give_no_rows_and_a_fully_categorised_score_file_is_scored(
    model_and_tokenizer, tiny_llama_path, tmp_path, capsys
):
    # A tokenizer given [] raises IndexError; `dmoerm score` passes [] to the router path when every line of the
    # file names its `category`, which crashed with a traceback before.
    from dmoerm_trl.cli import main

    model, tokenizer = model_and_tokenizer
    assert encode_keep_end(tokenizer, [], 16) == ([], [])
    assert model.compute_rewards([], tokenizer) == []
    model.save_pretrained(tmp_path / "model")
    data = tmp_path / "categorised.jsonl"
    rows = [("chitchat", conversation("Hello!", "Hi")), ("objective_qa", conversation("4.", "2 + 2?"))]
    data.write_text("".join(json.dumps({"messages": m, "category": c}) + "\n" for c, m in rows))
    code = main(["score", "--model", str(tmp_path / "model"), "--input", str(data), "--tokenizer", tiny_llama_path])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["category"] for r in results] == ["chitchat", "objective_qa"]
    for (category, messages), result in zip(rows, results):
        expected = model.compute_rewards([messages], tokenizer, categories=category)[0]
        assert result["reward"] == pytest.approx(expected["reward"], abs=1e-6)
        assert result["router_prob"] is None
