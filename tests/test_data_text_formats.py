"""TRL's text formats as TRL treats them: text pairs tokenized as text (no chat template), implicit-prompt pairs
split like ``trl.extract_prompt``, ``tools``/``chat_template_kwargs`` passed to the chat template; and the router
reading a text pair's prompt (its token count), never the response, in training and evaluation."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from dmoerm_trl.data import DataValidationError, is_text_pairs, load_preference_pairs
from dmoerm_trl.data.tokenize import routing_prompts, tokenize_pairs
from dmoerm_trl.models.dmoerm._prompt_boundary import PromptBoundaryError

sys.path.insert(0, str(Path(__file__).parent / "trainers"))
from trainer_helpers import DATA, stage_args, tiny_dmoerm

TEXT_PAIRS = [
    {"prompt": "Question: what is 2+2?\nAnswer:", "chosen": " 4", "rejected": " 5", "category": "objective_qa"},
    {"prompt": "Say hi to me", "chosen": " Hi there, friend!", "rejected": " No.", "category": "chitchat"},
]
HH_PAIRS = [  # Anthropic HH: no prompt column, the conversation is inside both answers
    {
        "chosen": "\n\nHuman: What color is the sky?\n\nAssistant: It is blue.",
        "rejected": "\n\nHuman: What color is the sky?\n\nAssistant: It is green.",
    },
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
    },
]
TEMPLATE = (  # ChatML that shows the tools and one extra keyword argument when given
    "{% if tools %}TOOLS:{{ tools | tojson }}\n{% endif %}{% if flavour %}FLAVOUR:{{ flavour }}\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Adds", "parameters": {"type": "object"}}}]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trl_tokenized(dataset, tokenizer, tiny_llama_path, tmp_path):
    """The ``chosen_ids``/``rejected_ids`` TRL's own RewardTrainer makes of ``dataset``."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, max_steps=1)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    return trainer.train_dataset["chosen_ids"], trainer.train_dataset["rejected_ids"]


def test_text_pairs_stay_text_and_tokenize_as_trl_does(tmp_path, tiny_llama_path, tiny_tokenizer):
    pairs = load_preference_pairs(Dataset.from_list(TEXT_PAIRS))
    assert is_text_pairs(pairs) and pairs[0]["prompt"] == TEXT_PAIRS[0]["prompt"] and pairs[0]["chosen"] == " 4"
    tokenized = tokenize_pairs(pairs, tiny_tokenizer, None, "pairs")
    chosen, rejected = trl_tokenized(
        pairs.remove_columns(["category", "pair_id"]), tiny_tokenizer, tiny_llama_path, tmp_path
    )
    assert tokenized["chosen_ids"] == chosen and tokenized["rejected_ids"] == rejected
    for row, record in zip(tokenized, TEXT_PAIRS):
        assert "<|im_start|>" not in tiny_tokenizer.decode(row["chosen_ids"])  # no chat template around text
        # The router's prompt: the prompt's tokens, nothing of the answer.
        assert tiny_tokenizer.decode(row["chosen_ids"][: row["chosen_prompt_length"]]) == record["prompt"]
        assert row["prompt_ids"] == row["chosen_ids"][: row["chosen_prompt_length"]]
    assert routing_prompts(tokenized, opener=[1, 2]) == tokenized["prompt_ids"]


def test_implicit_text_prompt_is_split_as_trl_extract_prompt(tmp_path, tiny_llama_path, tiny_tokenizer):
    from trl.data_utils import extract_prompt

    pairs = load_preference_pairs(Dataset.from_list(HH_PAIRS))
    for row, record in zip(pairs, HH_PAIRS):
        expected = extract_prompt(record)
        assert (row["prompt"], row["chosen"], row["rejected"]) == (
            expected["prompt"],
            expected["chosen"],
            expected["rejected"],
        )
    assert pairs[0]["prompt"].endswith("Assistant: It is") and pairs[0]["chosen"] == " blue."
    # TRL's RewardTrainer reads the raw HH rows whole: the same token ids as ours.
    chosen, rejected = trl_tokenized(Dataset.from_list(HH_PAIRS), tiny_tokenizer, tiny_llama_path, tmp_path)
    tokenized = tokenize_pairs(pairs, tiny_tokenizer, None, "pairs")
    assert tokenized["chosen_ids"] == chosen and tokenized["rejected_ids"] == rejected
    with pytest.raises(
        DataValidationError, match=r"record 0, field 'prompt': missing, and 'chosen'/'rejected' share no"
    ):
        load_preference_pairs(Dataset.from_list([{"chosen": "yes", "rejected": "no"}]))


def test_tools_and_chat_template_kwargs_reach_the_chat_template(tmp_path, tiny_llama_path, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = TEMPLATE
    prompt = [{"role": "user", "content": "What is 2+3?"}]
    records = [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "5"}],
            "rejected": [{"role": "assistant", "content": "6"}],
            "tools": TOOLS,
            "chat_template_kwargs": {},
        },
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "five"}],
            "rejected": [{"role": "assistant", "content": "six"}],
            "tools": None,
            "chat_template_kwargs": {"flavour": "salty"},
        },
    ]
    raw = Dataset.from_list([{**r, "tools": json.dumps(r["tools"]) if r["tools"] else None} for r in records])
    pairs = load_preference_pairs(raw)
    assert json.loads(pairs[0]["tools"]) == TOOLS and pairs[1]["chat_template_kwargs"] == {"flavour": "salty"}
    tokenized = tokenize_pairs(pairs, tokenizer, None, "pairs")
    assert tokenizer.decode(tokenized[0]["chosen_ids"]).startswith(
        'TOOLS:[{"type": "function", "function": {"name": "add"'
    )
    assert tokenizer.decode(tokenized[1]["chosen_ids"]).startswith("FLAVOUR:salty\n<|im_start|>user")
    assert tokenizer.decode(tokenized[1]["prompt_ids"]).startswith("FLAVOUR:salty")
    chosen, rejected = trl_tokenized(raw, tokenizer, tiny_llama_path, tmp_path)
    assert tokenized["chosen_ids"] == chosen and tokenized["rejected_ids"] == rejected
    # They mean something only to a chat template: a text pair with them is refused, not silently stripped.
    with pytest.raises(DataValidationError, match=r"record 0, field 'tools': only applies to conversational"):
        load_preference_pairs(Dataset.from_list([{**TEXT_PAIRS[0], "tools": json.dumps(TOOLS)}]))


def text_version(pairs):
    """The tiny conversational data as TRL text pairs (a 'User:/Assistant:' transcript, no chat template)."""

    def to_text(row):
        turns = "".join(f"{m['role'].title()}: {m['content']}\n" for m in row["prompt"])
        return {
            "prompt": turns + "Assistant:",
            "chosen": " " + row["chosen"][-1]["content"],
            "rejected": " " + row["rejected"][-1]["content"],
            "category": row["category"],
        }

    return Dataset.from_list([to_text(row) for row in pairs if row["category"]])


def test_text_pairs_train_the_router_and_evaluate_on_the_prompt(tmp_path, tiny_llama_path, tiny_tokenizer, one_thread):
    from dmoerm_trl.evaluation import evaluate_pair_accuracy, evaluate_reward_models, evaluate_router, prepare_pairs
    from dmoerm_trl.trainers import RouterTrainer
    from dmoerm_trl.utils.io import atomic_write_jsonl

    pairs = load_preference_pairs(text_version(load_preference_pairs(DATA)))
    assert is_text_pairs(pairs)
    tokenized = tokenize_pairs(pairs, tiny_tokenizer, 256, "pairs")
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    assert model.config.assistant_opener_ids  # the model ends chat prompts at the opener; text has none
    trainer = RouterTrainer(
        model,
        args=stage_args(tmp_path, num_train_epochs=6),
        train_dataset=tokenized,
        eval_dataset=tokenized,
        processing_class=tiny_tokenizer,
    )
    examples = trainer.train_dataset
    assert set(examples["view"]) == {0} and set(examples["prompt_only"]) == {1}
    assert {tuple(ids) for ids in examples["input_ids"]} == {tuple(ids) for ids in tokenized["prompt_ids"]}
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] == metrics["eval_accuracy_prompt"] and set(examples["labels"]) == {0, 1, 2}

    # Scoring routes each pair on its prompt tokens: the router's probabilities for prompt + either answer equal those
    # of the prompt alone, so the response cannot change them.
    model.set_training_stage(None)  # the whole model (the trainer left it in the router stage)
    model.eval()
    prepared = prepare_pairs(pairs, tiny_tokenizer, None, "pairs", {})
    with torch.no_grad():
        for row in prepared.select(range(4)):
            prompt = torch.tensor([row["prompt_ids"]])
            alone = model.route(prompt, torch.ones_like(prompt), prompt_mask=torch.ones_like(prompt)).softmax(-1)
            for side in ("chosen", "rejected"):
                ids = torch.tensor([row[f"{side}_ids"]])
                mask = (torch.arange(ids.shape[1]) < row[f"{side}_prompt_length"]).long().unsqueeze(0)
                probs = model(input_ids=ids, attention_mask=torch.ones_like(ids), prompt_mask=mask).router_probs
                torch.testing.assert_close(probs, alone, atol=1e-5, rtol=1e-4)
    _, scores = evaluate_pair_accuracy(model, tiny_tokenizer, prepared)
    n = len(prepared)
    assert scores["category_ids"][:n] == scores["category_ids"][n:]
    router = evaluate_router(model, tiny_tokenizer, prepared)
    assert set(router) == {"prompt"} and router["prompt"]["total"] == n
    names = model.config.category_names
    assert [names[i] for i in scores["category_ids"][:n]] == _routed(model, tiny_tokenizer, prepared)
    # Without the prompt boundary the model refuses a text pair instead of routing on its response.
    ids = torch.tensor([prepared[0]["chosen_ids"]])
    with pytest.raises(PromptBoundaryError, match="assistant-turn opener"):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))

    # `dmoerm eval`'s function on a saved model and a text-pair file.
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    atomic_write_jsonl(tmp_path / "text.jsonl", TEXT_PAIRS)
    report = evaluate_reward_models(
        str(tmp_path / "model"), str(tmp_path / "text.jsonl"), batch_size=2, text_pairs="text"
    )
    assert report["dmoerm"]["overall"]["total"] == len(TEXT_PAIRS)
    # `dmoerm eval`'s default (RewardBench's convention): the text pair rendered as a user turn + the answer.
    chat = evaluate_reward_models(str(tmp_path / "model"), str(tmp_path / "text.jsonl"), batch_size=2)
    assert chat["dmoerm"]["overall"]["total"] == len(TEXT_PAIRS)
    assert [r["chosen_reward"] for r in chat["examples"]] != [r["chosen_reward"] for r in report["examples"]]


def _routed(model, tokenizer, prepared):
    """The category the router gives each pair's prompt tokens alone (the router stage, prompt read whole)."""
    from dmoerm_trl.evaluation import _route

    names = model.config.category_names
    return [names[i] for i in _route(model, routing_prompts(prepared, None), tokenizer.pad_token_id, 1, "r", True)]
