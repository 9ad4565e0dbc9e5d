"""Prompt-only routing: the category depends on the prompt (every turn before the final assistant response) and on
nothing in the response, in every path that routes (forward, compute_rewards, TRL PPO's reward view, the router's
training examples), for three chat-template families, left and right padding, decoders and encoders."""

from __future__ import annotations

import json
import logging
from collections import defaultdict

import pytest
import torch
from transformers import AutoTokenizer

from dmoerm_trl import DMoERMForSequenceClassification
from dmoerm_trl.models.dmoerm._prompt_boundary import (
    PromptBoundaryError,
    assistant_opener_ids,
    prompt_mask_from_opener,
)
from dmoerm_trl.models.dmoerm._trunk import decoder_layers
from dmoerm_trl.testing_utils import (
    CHAT_TEMPLATES,
    make_tiny_bert,
    make_tiny_chat_tokenizer,
    make_tiny_llama,
    randomize_adapters,
)
from dmoerm_trl.trainers.router_trainer import router_examples, routing_prompt_ids

CATEGORIES = {
    "objective_qa": ["correctness", "logic", "depth"],
    "chitchat": ["empathy", "fluency"],
    "roleplay": ["character"],
}
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "How are you today?"}],
    [{"role": "user", "content": "Solve 12 * 7."}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "Let's play a game: you are a pirate captain."}],
    [{"role": "user", "content": "Is it better to rent or to buy a house?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain why the sky is blue."}],
    # Multi-turn: the prompt ends at the LAST assistant opener, after the earlier assistant turn.
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Where do we sail, captain?"},
    ],
]
# Off-task answers included: whole-text routing sends some of them elsewhere; prompt-only routing cannot.
RESPONSES = [
    "The capital of France is Paris.",
    "Arr, welcome aboard, matey! We sail to the treasure island tonight!",
    "The answer is 84 because 12 times 7 equals 84.",
    "0123456789 ,.;:!? user assistant system",
    "",
]


_BACKBONES: dict = {}


def tiny_backbone(family: str, tmp_path, num_layers: int):
    """A saved tiny Llama with the family's tokenizer (built once per family and depth in this module)."""
    key = (family, num_layers)
    if key not in _BACKBONES:
        tokenizer = make_tiny_chat_tokenizer(family)
        path = make_tiny_llama(tmp_path / f"llama-{family}-{num_layers}", num_layers=num_layers, tokenizer=tokenizer)
        _BACKBONES[key] = (path, AutoTokenizer.from_pretrained(path))
    return _BACKBONES[key]


def chat_model(family: str, tmp_path, router_mode="lora", trunk_layers=0, num_layers=2, seed=0, **kwargs):
    path, tokenizer = tiny_backbone(family, tmp_path, num_layers)
    model = DMoERMForSequenceClassification.from_backbone(
        path, CATEGORIES, tokenizer=tokenizer, router_mode=router_mode, trunk_layers=trunk_layers, **kwargs
    )
    return randomised(model, tokenizer, seed), tokenizer


def randomised(model, tokenizer, seed=0):
    """Random adapters and a random router head, centred on these prompts so that they spread over the categories
    (a tiny random backbone gives all prompts nearly the same features)."""
    randomize_adapters(model, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.router_head.weight.copy_(torch.randn(model.router_head.weight.shape, generator=generator) * 3)
        for head in [*model.value_heads.values(), *model.task_heads.values()]:
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.5)
    model.eval()
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    prompt_mask = None if model.config.assistant_opener_ids else batch["attention_mask"]
    logits = model.route(batch["input_ids"], batch["attention_mask"], prompt_mask=prompt_mask)
    scale = logits.std(0).clamp(min=1e-6)
    with torch.no_grad():  # standardise each category's logit over the prompts: (logit - mean) / std
        model.router_head.bias.copy_((model.router_head.bias - logits.mean(0)) / scale)
        model.router_head.weight.div_(scale.unsqueeze(1))
    return model


def conversations():
    return [(p, r) for p in range(len(PROMPTS)) for r in RESPONSES]


def render(tokenizer, prompt_index, response):
    return tokenizer.apply_chat_template(
        PROMPTS[prompt_index] + [{"role": "assistant", "content": response}], tokenize=False
    )


def encode(tokenizer, texts, side):
    tokenizer.padding_side = side
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = "right"


def routed_by_prompt(model, tokenizer, side, batch_size=16):
    """``{prompt index: {category id, ...}}`` over every response, from ``model(...)`` in mixed batches."""
    pairs = conversations()
    texts = [render(tokenizer, p, r) for p, r in pairs]
    categories = defaultdict(set)
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[start : start + batch_size], side)
            out = model(**batch)
            for (p, _), category in zip(pairs[start : start + batch_size], out.category_ids.tolist()):
                categories[p].add(category)
    return categories


def prompt_only_route(model, tokenizer, side):
    """The router's decision on each prompt alone (generation prompt appended), one per prompt."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    batch = encode(tokenizer, texts, side)
    return model.route(batch["input_ids"], batch["attention_mask"]).argmax(-1).tolist()


# ------------------------------------------------------------------------------------------- the boundary itself
@pytest.mark.parametrize(
    "family,opener",
    [
        ("smollm2", "<|im_start|>assistant\n"),
        ("qwen2", "<|im_start|>assistant\n"),
        ("llama3", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ],
)
def test_the_opener_comes_from_the_chat_template(family, opener):
    tokenizer = make_tiny_chat_tokenizer(family)
    ids = assistant_opener_ids(tokenizer)
    assert tokenizer.decode(ids) == opener
    # In every conversation the prompt mask ends exactly where the prompt with its generation prompt ends.
    for p, response in conversations():
        full = tokenizer(render(tokenizer, p, response), add_special_tokens=False, return_tensors="pt")["input_ids"]
        prompt = tokenizer.apply_chat_template(PROMPTS[p], tokenize=False, add_generation_prompt=True)
        length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        mask, found = prompt_mask_from_opener(full, torch.ones_like(full), ids)
        assert found.all() and mask.sum().item() == length and mask[0, :length].all()


def test_a_tokenizer_without_a_template_or_opener_is_refused():
    tokenizer = make_tiny_chat_tokenizer("smollm2")
    tokenizer.chat_template = None
    with pytest.raises(PromptBoundaryError, match="no chat template"):
        assistant_opener_ids(tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # no role markers at all
    with pytest.raises(PromptBoundaryError, match="fixed token sequence|user turn"):
        assistant_opener_ids(tokenizer)
    tokenizer.chat_template = "{{ raise_exception('only system messages') }}"
    with pytest.raises(PromptBoundaryError, match="cannot render a user turn and an assistant turn"):
        assistant_opener_ids(tokenizer)


def test_prompt_mask_with_right_and_left_padding():
    ids = torch.tensor([[9, 1, 2, 5, 1, 2, 7, 0, 0], [0, 0, 9, 9, 1, 2, 6, 6, 6]])  # right-, left-padded
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1, 1]])
    prompt, found = prompt_mask_from_opener(ids, mask, [1, 2])
    assert found.tolist() == [True, True]
    assert prompt.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0, 0]]
    # An opener made of pad positions does not count.
    _, found = prompt_mask_from_opener(torch.tensor([[1, 2, 3]]), torch.tensor([[0, 0, 1]]), [1, 2])
    assert found.tolist() == [False]


# ------------------------------------------------------------------------------ every response routed the same
CASES = [
    ("smollm2", "lora", 0),
    ("llama3", "lora", 0),
    ("qwen2", "lora", 0),
    ("llama3", "trunk", 1),
    ("llama3", "linear", 0),
]


@pytest.mark.parametrize("family,router_mode,trunk_layers", CASES)
def test_every_response_to_a_prompt_is_routed_like_the_prompt(tmp_path, family, router_mode, trunk_layers):
    model, tokenizer = chat_model(family, tmp_path, router_mode, trunk_layers)
    for side in ("left", "right"):
        routed = routed_by_prompt(model, tokenizer, side)
        assert all(len(categories) == 1 for categories in routed.values()), (side, routed)
        by_prompt = [next(iter(routed[p])) for p in range(len(PROMPTS))]
        assert len(set(by_prompt)) > 1  # the randomised router spreads the prompts over categories
        assert by_prompt == prompt_only_route(model, tokenizer, side)


def test_whole_text_routing_would_split_prompts(tmp_path):
    """The check above can fail: the same router reading the whole text routes responses of one prompt apart."""
    model, tokenizer = chat_model("smollm2", tmp_path)
    model.config.assistant_opener_ids = None
    routed = routed_by_prompt(model, tokenizer, "right")
    assert any(len(categories) > 1 for categories in routed.values())


def test_compute_rewards_routes_on_the_prompt(tmp_path):
    model, tokenizer = chat_model("llama3", tmp_path)
    pairs = conversations()
    messages = [PROMPTS[p] + [{"role": "assistant", "content": r}] for p, r in pairs]
    results = model.compute_rewards(messages, tokenizer, batch_size=7)
    routed = defaultdict(set)
    for (p, _), result in zip(pairs, results):
        routed[p].add(result["category"])
    assert all(len(c) == 1 for c in routed.values()) and len({next(iter(c)) for c in routed.values()}) > 1
    names = model.config.category_names
    assert [next(iter(routed[p])) for p in range(len(PROMPTS))] == [
        names[i] for i in prompt_only_route(model, tokenizer, "right")
    ]


def test_trl_ppo_reward_view_routes_on_the_query(tmp_path):
    utils = pytest.importorskip("trl.experimental.utils", reason="this TRL has no experimental utils")
    if not hasattr(utils, "get_reward"):
        pytest.skip("this TRL has no PPO get_reward (PPO lives in trl>=1.10,<1.13)")
    model, tokenizer = chat_model("qwen2", tmp_path)
    pad = tokenizer.pad_token_id
    pairs = [(p, r) for p, r in conversations() if r in RESPONSES[:3]]
    queries = encode(
        tokenizer,
        [tokenizer.apply_chat_template(PROMPTS[p], tokenize=False, add_generation_prompt=True) for p, _ in pairs],
        "left",
    )
    responses = encode(tokenizer, [r + "<|im_end|>" for _, r in pairs], "right")
    query_responses = torch.cat([queries["input_ids"], responses["input_ids"]], 1)
    prompt_categories = prompt_only_route(model, tokenizer, "left")
    assert len(set(prompt_categories)) > 1
    model.train()  # as TRL leaves it
    with torch.no_grad():
        _, rewards, _ = utils.get_reward(model, query_responses, pad, queries["input_ids"].shape[1])
    model.eval()
    for row, (p, _) in enumerate(pairs):
        ids = query_responses[row][query_responses[row] != pad].unsqueeze(0)
        with torch.no_grad():
            expected = model(input_ids=ids, categories=prompt_categories[p]).logits[0, 0]
            other = model(input_ids=ids, categories=(prompt_categories[p] + 1) % 3).logits[0, 0]
        torch.testing.assert_close(rewards[row], expected, rtol=1e-5, atol=1e-5)
        assert not torch.isclose(rewards[row], other)


@pytest.mark.parametrize("backbone", ["llama", "bert"])
def test_router_training_features_equal_the_routing_features(tmp_path, backbone):
    """The router is trained on prompt prefixes; its stage forward on them gives exactly what it computes on any
    full conversation (so it is trained as it is used), for a causal decoder and a bidirectional encoder."""
    from datasets import Dataset

    if backbone == "llama":
        model, tokenizer = chat_model("smollm2", tmp_path)
    else:
        path = make_tiny_bert(tmp_path / "bert", max_position_embeddings=512)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = randomised(
            DMoERMForSequenceClassification.from_backbone(path, CATEGORIES, tokenizer=tokenizer), tokenizer
        )
    opener = model.config.assistant_opener_ids
    rows = [
        {
            "prompt": PROMPTS[p],
            "chosen": [{"role": "assistant", "content": RESPONSES[1]}],
            "rejected": [{"role": "assistant", "content": RESPONSES[3]}],
            "category": "chitchat",
        }
        for p in range(len(PROMPTS))
    ]
    examples = router_examples(Dataset.from_list(rows), tokenizer, model.config.category_names, opener=opener)
    assert len(examples) == len(PROMPTS) and set(examples["view"]) == {0}
    model.set_training_stage("router")
    model.eval()
    try:
        with torch.no_grad():
            for row, prefix in zip(rows, examples["input_ids"]):
                for answer in (row["chosen"], row["rejected"]):
                    ids = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=True, return_dict=True)
                    full = torch.tensor([ids["input_ids"]])
                    assert routing_prompt_ids(full[0].tolist(), opener) == prefix
                    torch.testing.assert_close(
                        model(input_ids=full).logits,
                        model(input_ids=torch.tensor([prefix])).logits,
                        rtol=1e-4,
                        atol=1e-4,
                    )
    finally:
        model.set_training_stage(None)


@pytest.mark.parametrize("router_mode,trunk_layers", [("lora", 0), ("trunk", 1)])
def test_bert_encoder_routes_on_the_prompt(tmp_path, router_mode, trunk_layers):
    path = make_tiny_bert(tmp_path / "bert", max_position_embeddings=512)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = randomised(
        DMoERMForSequenceClassification.from_backbone(
            path, CATEGORIES, tokenizer=tokenizer, router_mode=router_mode, trunk_layers=trunk_layers
        ),
        tokenizer,
    )
    assert not model._causal_backbone
    routed = routed_by_prompt(model, tokenizer, "right")
    assert all(len(c) == 1 for c in routed.values()) and len({next(iter(c)) for c in routed.values()}) > 1


# ------------------------------------------------------------------------------------------------ cost: no pass
def count_layer_calls(model, texts, tokenizer, layer_indices):
    _, _, layers = decoder_layers(model.backbone)
    calls = dict.fromkeys(layer_indices, 0)
    handles = [
        layers[i].register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1)) for i in layer_indices
    ]
    try:
        with torch.no_grad():
            out = model(**encode(tokenizer, texts, "right"))
    finally:
        for handle in handles:
            handle.remove()
    experts = sum(len(CATEGORIES[model.config.category_names[c]]) for c in out.category_ids.unique().tolist())
    return calls, experts


@pytest.mark.parametrize("router_mode,trunk_layers,num_layers", [("lora", 0, 2), ("trunk", 2, 4)])
def test_decoders_route_the_prompt_without_an_extra_pass(tmp_path, router_mode, trunk_layers, num_layers):
    model, tokenizer = chat_model(
        "smollm2", tmp_path, router_mode, trunk_layers, num_layers=num_layers, expert_batching="sequential"
    )
    texts = [render(tokenizer, p, r) for p, r in conversations()[:12]]
    calls, experts = count_layer_calls(model, texts, tokenizer, [0, num_layers - 1])
    if router_mode == "trunk":  # trunk once; the top layer once per expert, never for the router
        assert calls == {0: 1, num_layers - 1: experts}
    else:  # one router pass + one pass per expert of each routed category
        assert calls == {0: 1 + experts, num_layers - 1: 1 + experts}


def test_bert_trunk_router_costs_one_prompt_only_trunk_pass(tmp_path):
    path = make_tiny_bert(tmp_path / "bert4", num_layers=4, max_position_embeddings=512)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = randomised(
        DMoERMForSequenceClassification.from_backbone(
            path, CATEGORIES, tokenizer=tokenizer, router_mode="trunk", trunk_layers=2, expert_batching="sequential"
        ),
        tokenizer,
    )
    texts = [render(tokenizer, p, r) for p, r in conversations()[:6]]
    calls, experts = count_layer_calls(model, texts, tokenizer, [0, 3])
    assert calls == {0: 2, 3: experts}  # the shared trunk + one trunk pass over the prompt alone


# ------------------------------------------------------------------------------------- no boundary, old models
def test_a_row_without_the_opener_is_an_error_naming_it(tmp_path):
    model, tokenizer = chat_model("smollm2", tmp_path)
    texts = [render(tokenizer, 0, RESPONSES[0]), "plain text without any template"]
    batch = encode(tokenizer, texts, "right")
    with pytest.raises(PromptBoundaryError, match=r"row 1 of the batch.*<\|im_start\|>assistant.*categories="):
        model(**batch)
    # The fixes the message names: categories= (router bypass) or an explicit prompt_mask=.
    assert model(**batch, categories="chitchat").category_ids.tolist() == [1, 1]
    opener = model.config.assistant_opener_ids
    prompt_mask = prompt_mask_from_opener(batch["input_ids"], batch["attention_mask"], opener)[0]
    prompt_mask[1, :3] = 1  # say the plain text's first 3 tokens are its prompt
    auto = model(**encode(tokenizer, texts[:1], "right"))
    explicit = model(**batch, prompt_mask=prompt_mask)
    torch.testing.assert_close(explicit.router_logits[0], auto.router_logits[0], rtol=1e-5, atol=1e-5)
    prefix = encode(tokenizer, texts[1:], "right")["input_ids"][:, :3]
    alone = model.route(prefix, prompt_mask=torch.ones_like(prefix))[0]
    torch.testing.assert_close(explicit.router_logits[1], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(PromptBoundaryError, match="prompt_mask row 0 marks no real token"):
        model(**batch, prompt_mask=torch.zeros_like(prompt_mask))


def test_without_a_recorded_boundary_the_router_reads_everything_and_warns(tmp_path, caplog):
    tokenizer = make_tiny_chat_tokenizer("smollm2")
    path = make_tiny_llama(tmp_path / "llama", tokenizer=tokenizer)
    model = randomised(DMoERMForSequenceClassification.from_backbone(path, CATEGORIES), tokenizer)
    assert model.config.assistant_opener_ids is None
    batch = encode(tokenizer, ["plain text", "more plain text here"], "right")
    with caplog.at_level(logging.WARNING, logger="dmoerm_trl.models.dmoerm.modeling_dmoerm"):
        model(**batch)
        model(**batch)
    warnings = [r for r in caplog.records if "no recorded prompt boundary" in r.getMessage()]
    assert len(warnings) == 1 and "set_prompt_boundary" in warnings[0].getMessage()
    assert model.set_prompt_boundary(tokenizer) == assistant_opener_ids(tokenizer)


@pytest.mark.parametrize("with_tokenizer", [True, False])
def test_a_model_saved_before_prompt_routing_loads(tmp_path, with_tokenizer, caplog):
    model, tokenizer = chat_model("llama3", tmp_path)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    if with_tokenizer:
        tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("assistant_opener_ids", "assistant_opener_text"):
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    loaded = DMoERMForSequenceClassification.from_pretrained(folder)
    texts = [render(tokenizer, p, r) for p, r in conversations()[:10]]
    batch = encode(tokenizer, texts, "right")
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        out = loaded(**batch)
    if with_tokenizer:  # the boundary comes from the tokenizer saved in the folder: same routing as before saving
        assert loaded.config.assistant_opener_ids == model.config.assistant_opener_ids
        torch.testing.assert_close(out.logits, model(**batch).logits)
    else:  # no tokenizer to take it from: whole-text routing, with a warning naming the fix
        assert loaded.config.assistant_opener_ids is None
        assert any("set_prompt_boundary" in r.getMessage() for r in caplog.records)
        # compute_rewards gets a tokenizer, and takes the boundary from it.
        results = loaded.compute_rewards(
            [PROMPTS[0] + [{"role": "assistant", "content": r}] for r in RESPONSES], tokenizer
        )
        assert len({r["category"] for r in results}) == 1


def test_the_opener_is_saved_with_the_config(tmp_path):
    model, tokenizer = chat_model("qwen2", tmp_path)
    model.save_pretrained(tmp_path / "saved")
    loaded = DMoERMForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert loaded.config.assistant_opener_ids == assistant_opener_ids(tokenizer)
    assert loaded.config.assistant_opener_text == "<|im_start|>assistant\n"
    assert (
        "Routing input: the prompt, up to the chat template's last `'<|im_start|>assistant\\n'`"
        in (tmp_path / "saved" / "README.md").read_text()
    )
    assert set(CHAT_TEMPLATES) == {"smollm2", "llama3", "qwen2"}


def test_reward_scorer_tells_the_router_where_a_text_prompt_ends(tmp_path):
    """Text prompts carry no template: RewardScorer knows where each prompt ends and passes it as prompt_mask."""
    from dmoerm_trl.rl import RewardScorer

    model, tokenizer = chat_model("smollm2", tmp_path)
    prompts = ["What is the capital of France?"] * 3 + ["Solve 12 * 7."] * 3
    completions = [" Paris.", " Arr, welcome aboard, matey!", "", " 84.", " The sea is blue and deep.", " 0123"]
    rewards = RewardScorer(model, tokenizer)(prompts, completions)
    routed = set()
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids = tokenizer(prompt + completion + tokenizer.eos_token, return_tensors="pt")["input_ids"]
        prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        assert torch.equal(ids[:, : prompt_ids.shape[1]], prompt_ids)
        category = model.route(prompt_ids, prompt_mask=torch.ones_like(prompt_ids)).argmax(-1).item()
        routed.add((prompt, category))
        with torch.no_grad():
            expected = model(input_ids=ids, categories=category).logits[0, 0]
        torch.testing.assert_close(rewards[i], expected, rtol=1e-4, atol=1e-5)
    assert len(routed) == 2  # one category per prompt
