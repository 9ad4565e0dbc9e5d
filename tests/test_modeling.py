"""The DMoERM model: construction, batching, routing, training stages, TRL contracts, bad input."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from dmoerm_trl import DMoERMConfig, DMoERMForSequenceClassification
from dmoerm_trl.testing_utils import make_tiny_tokenizer, randomize_adapters


def chat(user: str, assistant: str) -> str:
    """A one-turn conversation in the tiny tokenizer's ChatML template (the router reads up to the assistant
    opener)."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"


CONVERSATIONS = [
    chat("What is the capital of France?", "The capital of France is Paris."),
    chat("How are you today?", "I am fine, thank you."),
    chat("Solve 12 * 7.", "The answer is 84."),
    chat("hi", ""),
    chat("Write a short poem about the sea.", "The sea is blue and deep and wide and calm tonight."),
]


def build(path, categories, tokenizer=None, **kwargs):
    model = DMoERMForSequenceClassification.from_backbone(path, categories, tokenizer=tokenizer, **kwargs)
    randomize_adapters(model)
    return model.eval()


@pytest.fixture
def llama_model(tiny_llama_path, tiny_tokenizer, tiny_categories):
    return build(tiny_llama_path, tiny_categories, tiny_tokenizer)


def encode(tokenizer, texts, side="right", add_special_tokens=False):
    tokenizer.padding_side = side
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = "right"


def test_from_backbone_loads_pretrained_weights(tiny_llama_path, tiny_tokenizer, tiny_categories):
    model = DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, tokenizer=tiny_tokenizer)
    reference = AutoModel.from_pretrained(tiny_llama_path)
    base = model.backbone.get_base_model()
    for name, weight in reference.state_dict().items():
        peft_name = name.replace("q_proj.", "q_proj.base_layer.").replace("v_proj.", "v_proj.base_layer.")
        torch.testing.assert_close(base.state_dict()[peft_name], weight, rtol=0, atol=0)
    # One frozen base, adapters per category (task + experts) and a router adapter; heads registered.
    assert sorted(model.backbone.peft_config) == sorted(
        [
            "router",
            "objective_qa__task",
            "objective_qa__correctness",
            "objective_qa__logic",
            "objective_qa__depth",
            "chitchat__task",
            "chitchat__empathy",
            "chitchat__fluency",
        ]
    )
    names = dict(model.named_parameters())
    assert "value_heads.objective_qa__logic.weight" in names
    assert "aggregators.chitchat.proj.weight" in names and names["aggregators.chitchat.proj.weight"].shape == (32, 64)
    assert "router_head.weight" in names and names["router_head.weight"].shape == (2, 32)
    assert model.config.lora_target_modules == ["q_proj", "v_proj"]
    assert model.config.pooling == "last" and model.config.pad_token_id == tiny_tokenizer.pad_token_id


def test_forward_outputs_and_layout(llama_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, CONVERSATIONS)
    out = llama_model(**batch)
    assert out.logits.shape == (5, 1)
    assert out.category_ids.shape == (5,) and out.router_probs.shape == (5, 2)
    torch.testing.assert_close(out.router_probs.sum(-1), torch.ones(5))
    assert out.capability_rewards.shape == (5, 3)
    for row, category_id in enumerate(out.category_ids.tolist()):
        k = len(llama_model.config.categories[llama_model.config.category_names[category_id]])
        assert not out.capability_rewards[row, :k].isnan().any()
        assert out.capability_rewards[row, k:].isnan().all()
    # The router is bypassed with categories=, by name or id; rewards follow the chosen category's experts.
    forced = llama_model(**batch, categories=["chitchat"] * 5)
    assert forced.router_probs is None and forced.category_ids.tolist() == [1] * 5
    assert llama_model(**batch, categories=1).logits.allclose(forced.logits)
    other = llama_model(**batch, categories="objective_qa")
    assert not torch.allclose(other.logits, forced.logits)


def test_capability_rewards_are_the_experts_value_heads(llama_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, CONVERSATIONS[:2])
    out = llama_model(**batch, categories="objective_qa")
    llama_model.set_training_stage("capability", category="objective_qa", capability="logic")
    expert = llama_model(**batch).logits[:, 0]
    torch.testing.assert_close(out.capability_rewards[:, 1], expert)
    llama_model.set_training_stage(None)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("batching", ["mixed", "sequential"])
def test_batch_equals_one_at_a_time(llama_model, tiny_tokenizer, side, batching):
    llama_model.config.expert_batching = batching
    batch = encode(tiny_tokenizer, CONVERSATIONS, side=side)
    categories = ["objective_qa", "chitchat", "objective_qa", "chitchat", "chitchat"]
    for given in (None, categories):
        out = llama_model(**batch, categories=given)
        for i, text in enumerate(CONVERSATIONS):
            single = llama_model(**encode(tiny_tokenizer, [text]), categories=None if given is None else given[i])
            torch.testing.assert_close(out.logits[i], single.logits[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(
                out.capability_rewards[i], single.capability_rewards[0], rtol=1e-5, atol=1e-5, equal_nan=True
            )
            assert out.category_ids[i] == single.category_ids[0]
    assert len(set(out.category_ids.tolist())) == 2  # really mixed categories


def test_mixed_and_sequential_expert_batching_agree(llama_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, CONVERSATIONS)
    llama_model.config.expert_batching = "mixed"
    mixed = llama_model(**batch)
    llama_model.config.expert_batching = "sequential"
    sequential = llama_model(**batch)
    torch.testing.assert_close(mixed.logits, sequential.logits, rtol=1e-5, atol=1e-6)


def test_training_mode_under_no_grad_equals_eval(llama_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, CONVERSATIONS)
    expected = llama_model(**batch).logits
    llama_model.train()
    with torch.no_grad():
        first = llama_model(**batch).logits
        second = llama_model(**batch).logits
    assert llama_model.training  # left as TRL left it
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    with pytest.raises(RuntimeError, match="set_training_stage"):
        llama_model(**batch)


STAGES = [
    ("router", {}, ("router_head.", ".router.")),
    ("task", {"category": "chitchat"}, ("task_heads.chitchat.", ".chitchat__task.")),
    (
        "capability",
        {"category": "objective_qa", "capability": "logic"},
        ("value_heads.objective_qa__logic.", ".objective_qa__logic."),
    ),
    ("aggregator", {"category": "objective_qa"}, ("aggregators.objective_qa.",)),
]


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("stage,selector,markers", STAGES, ids=[s[0] for s in STAGES])
def test_stage_gradients_reach_exactly_the_stage(llama_model, tiny_tokenizer, stage, selector, markers, checkpointing):
    if checkpointing:
        llama_model.gradient_checkpointing_enable()
        assert llama_model.backbone.get_base_model().gradient_checkpointing
    trainable = set(llama_model.set_training_stage(stage, **selector))
    expected = {n for n, _ in llama_model.named_parameters() if any(m in n or n.startswith(m) for m in markers)}
    assert trainable == expected
    llama_model.train()
    batch = encode(tiny_tokenizer, CONVERSATIONS)
    labels = torch.tensor([0, 1, 0, 1, 1]) if stage == "router" else None
    out = llama_model(**batch, labels=labels)
    loss = out.loss if stage == "router" else out.logits.sum()
    loss.backward()
    with_grad = {n for n, p in llama_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # Exactly the stage's parameters get a gradient: none outside it, and none of the stage silently skipped
    # (e.g. by checkpointing). LoRA A's gradient is zero while B is zero, hence randomized B in the fixture.
    assert with_grad == expected, (sorted(with_grad - expected)[:3], sorted(expected - with_grad)[:3])
    llama_model.zero_grad(set_to_none=True)
    llama_model.set_training_stage(None)


def test_aggregator_stage_uses_cached_features(llama_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, CONVERSATIONS)
    features = llama_model.compute_expert_features(batch["input_ids"], batch["attention_mask"], "objective_qa")
    assert features.shape == (5, 3 * 32) and not features.requires_grad
    llama_model.set_training_stage("aggregator", category="objective_qa")
    cached = llama_model(**batch, expert_features=features).logits
    computed = llama_model(**batch).logits
    torch.testing.assert_close(cached, computed)
    llama_model.set_training_stage(None)
    torch.testing.assert_close(llama_model(**batch, categories="objective_qa").logits, computed)


def test_init_experts_from_task_copies_adapter_and_head(llama_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, CONVERSATIONS[:3])
    llama_model.set_training_stage("task", category="chitchat")
    task_reward = llama_model(**batch).logits
    llama_model.init_experts_from_task("chitchat")
    for capability in ("empathy", "fluency"):
        llama_model.set_training_stage("capability", category="chitchat", capability=capability)
        torch.testing.assert_close(llama_model(**batch).logits, task_reward)
    llama_model.set_training_stage(None)


def test_trl_ppo_get_reward_contract(llama_model, tiny_tokenizer):
    utils = pytest.importorskip("trl.experimental.utils", reason="this TRL has no experimental utils")
    if not hasattr(utils, "get_reward"):
        pytest.skip("this TRL has no PPO get_reward (PPO lives in trl>=1.10,<1.13)")
    pad = tiny_tokenizer.pad_token_id
    # PPO queries are chat-templated prompts with the generation prompt (the assistant opener) at their end.
    prompts = [[{"role": "user", "content": text}] for text in ("What is 2?", "Tell me about the sea please")]
    texts = [tiny_tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    queries = encode(tiny_tokenizer, texts, side="left")
    responses = encode(tiny_tokenizer, ["It is 4.<|im_end|>", "Blue"], side="right")
    query_responses = torch.cat([queries["input_ids"], responses["input_ids"]], 1)
    context_length = queries["input_ids"].shape[1]
    llama_model.train()  # TRL leaves the reward model in training mode
    with torch.no_grad():
        reward_logits, rewards, _ = utils.get_reward(llama_model, query_responses, pad, context_length)
    assert reward_logits.shape == (2, query_responses.shape[1], 1)
    llama_model.eval()
    # The same tokens without any padding, one sequence at a time: TRL's left+right padding changes nothing.
    for row, ids in enumerate(query_responses):
        unpadded = ids[ids != pad].unsqueeze(0)
        expected = llama_model(input_ids=unpadded, attention_mask=torch.ones_like(unpadded)).logits[0, 0]
        torch.testing.assert_close(rewards[row], expected, rtol=1e-5, atol=1e-5)


def test_ppo_view_refuses_a_model_left_in_a_training_stage(llama_model, tiny_tokenizer):
    llama_model.set_training_stage("aggregator", category="chitchat")
    with pytest.raises(RuntimeError, match="set_training_stage\\(None\\)"):
        llama_model.reward_view(**encode(tiny_tokenizer, ["hi"]))


def test_bert_encoder_backbone(tiny_bert_path, tiny_bert_tokenizer, tiny_categories):
    model = build(tiny_bert_path, tiny_categories, tiny_bert_tokenizer)
    assert model.config.lora_target_modules == ["query", "value"] and model.config.pooling == "first"
    batch = encode(tiny_bert_tokenizer, CONVERSATIONS, add_special_tokens=True)
    out = model(**batch)
    assert out.logits.shape == (5, 1)
    for i, text in enumerate(CONVERSATIONS):
        single = model(**encode(tiny_bert_tokenizer, [text], add_special_tokens=True))
        torch.testing.assert_close(out.logits[i], single.logits[0], rtol=1e-5, atol=1e-5)


def test_compute_rewards_on_conversations(llama_model, tiny_tokenizer):
    results = llama_model.compute_rewards(
        [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], CONVERSATIONS[0]],
        tiny_tokenizer,
    )
    assert len(results) == 2
    for result in results:
        assert result["category"] in llama_model.config.categories
        assert list(result["capability_rewards"]) == llama_model.config.categories[result["category"]]
    # Plain text has no prompt boundary: an error naming the conversation, unless the router is bypassed.
    with pytest.raises(ValueError, match="conversation 1: the router reads the prompt only.*categories="):
        llama_model.compute_rewards([CONVERSATIONS[0], "plain text"], tiny_tokenizer)
    forced = llama_model.compute_rewards([CONVERSATIONS[0], "plain text"], tiny_tokenizer, categories="chitchat")
    assert [r["category"] for r in forced] == ["chitchat"] * 2 and forced[1]["router_prob"] is None


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "categories,message",
    [
        ({}, "categories is empty"),
        ({"": ["a"]}, "non-empty"),
        ({"qa": []}, "has no capabilities"),
        ({"qa": ["a", "a"]}, "listed twice"),
        ({"qa": ["a", " a"]}, "white space"),
        ({"qa": "correctness"}, "must be a list"),
        ({"sub QA": ["a"], "sub_QA": ["b"]}, "same adapter name"),
        (["qa"], "must be a dict"),
    ],
)
def test_bad_categories(categories, message):
    with pytest.raises(ValueError, match=message):
        DMoERMConfig(categories=categories)


def test_unknown_category_and_capability(llama_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, ["hi"])
    with pytest.raises(ValueError, match="unknown category 'poetry'.*objective_qa"):
        llama_model(**batch, categories=["poetry"])
    with pytest.raises(ValueError, match="unknown capability 'humour'"):
        llama_model.set_training_stage("capability", category="chitchat", capability="humour")
    with pytest.raises(ValueError, match="needs category="):
        llama_model.set_training_stage("task")


def test_backbone_without_lora_targets(tiny_categories):
    from transformers import GPTNeoXConfig

    backbone = AutoModel.from_config(
        GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=64)
    )
    # GPT-NeoX names its projection query_key_value: auto-detected.
    model = DMoERMForSequenceClassification.from_backbone(backbone, tiny_categories)
    assert model.config.lora_target_modules == ["query_key_value"]
    with pytest.raises(ValueError, match="not linear layers.*choose from"):
        DMoERMForSequenceClassification.from_backbone(backbone, tiny_categories, lora_target_modules=["q_proj"])

    class NoAttention(torch.nn.Module):
        pass

    from transformers import PretrainedConfig, PreTrainedModel

    class Bare(PreTrainedModel):
        config_class = PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.mlp = torch.nn.Linear(4, 4)

    bare = Bare(PretrainedConfig(hidden_size=4))
    with pytest.raises(ValueError, match="none of the usual LoRA target modules.*lora_target_modules"):
        DMoERMForSequenceClassification.from_backbone(bare, tiny_categories)


def test_tokenizer_without_pad_token(tiny_llama_path, tiny_categories):
    tokenizer = make_tiny_tokenizer(pad_token=False)
    with pytest.raises(ValueError, match="no pad token.*tokenizer.pad_token = tokenizer.eos_token"):
        DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, tokenizer=tokenizer)


def test_input_longer_than_the_backbone_allows_keeps_its_end(llama_model, caplog):
    # One rule everywhere (dmoerm_trl.truncation): an over-long input keeps its last tokens (the response), logged.
    too_long = torch.randint(5, 100, (1, 300), generator=torch.Generator().manual_seed(0))
    llama_model.eval()
    with torch.no_grad(), caplog.at_level("WARNING"):
        # Random ids hold no chat-template prompt for the router: the category is given.
        cut = llama_model(input_ids=too_long, categories="chitchat").logits
        end = llama_model(input_ids=too_long[:, -256:], categories="chitchat").logits
    assert torch.allclose(cut, end, atol=1e-5)
    assert "1 of 1 conversation(s) are longer than 256 tokens" in caplog.text


def test_peft_model_backbone_is_refused(tiny_llama_path, tiny_categories):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(AutoModel.from_pretrained(tiny_llama_path), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="not a PeftModel"):
        DMoERMForSequenceClassification.from_backbone(peft_model, tiny_categories)


def test_checkpoint_missing_backbone_weights_is_refused(tiny_llama_path, tiny_categories, tmp_path):
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_path, broken)
    config = json.loads((broken / "config.json").read_text())
    config["num_hidden_layers"] = 3  # the checkpoint has 2 layers: layer 3 would be random
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not contain all of the backbone's weights.*layers.2"):
        DMoERMForSequenceClassification.from_backbone(str(broken), tiny_categories)


def test_route_is_the_inference_router_in_any_stage(llama_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, CONVERSATIONS)
    expected = llama_model(**batch).router_logits
    llama_model.set_training_stage("capability", category="chitchat", capability="empathy")
    llama_model.train()
    torch.testing.assert_close(llama_model.route(**batch), expected)
    llama_model.set_training_stage(None)


def test_aggregator_stage_on_cached_features_needs_no_tokens(llama_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, CONVERSATIONS)
    features = llama_model.compute_expert_features(batch["input_ids"], batch["attention_mask"], "chitchat")
    llama_model.set_training_stage("aggregator", category="chitchat")
    out = llama_model(expert_features=features)
    assert out.logits.shape == (5, 1) and out.category_ids.tolist() == [1] * 5
    torch.testing.assert_close(out.logits, llama_model(**batch).logits)
    llama_model.set_training_stage(None)


@pytest.mark.parametrize("side", ["left", "right"])
def test_router_mean_pooling(tiny_llama_path, tiny_tokenizer, tiny_categories, side):
    model = build(tiny_llama_path, tiny_categories, tiny_tokenizer, router_pooling="mean")
    assert model.config.router_pooling == "mean" and model.config.pooling == "last"  # experts keep theirs
    batch = encode(tiny_tokenizer, CONVERSATIONS, side=side)
    logits = model.route(batch["input_ids"], batch["attention_mask"])
    opener = "<|im_start|>assistant\n"
    with torch.no_grad():
        for i, text in enumerate(CONVERSATIONS):
            # The mean over the prompt's tokens (up to and including the last assistant opener), computed alone.
            single = encode(tiny_tokenizer, [text[: text.rindex(opener) + len(opener)]])
            hidden = model.backbone(
                input_ids=single["input_ids"], attention_mask=single["attention_mask"], adapter_names=["router"]
            ).last_hidden_state
            torch.testing.assert_close(logits[i], model.router_head(hidden.mean(1))[0], atol=1e-5, rtol=1e-4)
            last = model.router_head(hidden[:, -1])[0]
            assert not torch.allclose(logits[i], last, atol=1e-4)
        model.set_training_stage("router")
        torch.testing.assert_close(model(**batch).logits, logits, atol=1e-5, rtol=1e-4)  # training sees the same
    model.set_training_stage(None)
    with pytest.raises(ValueError, match="router_pooling must be one of"):
        DMoERMConfig(categories=tiny_categories, router_pooling="max")
