"""The shared trunk (``trunk_layers > 0``): adapters only in the top layers, the bottom layers run once per sequence.

The reference for every "same result" check is the same model with the split switched off (``config.trunk_layers = 0``
for one call): the full backbone forward with the very same weights, where the bottom layers carry no adapter.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AutoModel, AutoModelForSequenceClassification, LlamaConfig, LlamaModel

from dmoerm_trl import DMoERMConfig, DMoERMForSequenceClassification
from dmoerm_trl.models.dmoerm._trunk import decoder_layers
from dmoerm_trl.testing_utils import make_tiny_bert, make_tiny_llama, randomize_adapters

CATEGORIES = {"objective_qa": ["correctness", "logic", "depth"], "chitchat": ["empathy", "fluency"]}
TEXTS = [
    "What is the capital of France? Paris.",
    "How are you today? I am fine, thank you.",
    "Solve 12 * 7. The answer is 84.",
    "hi",
]


@pytest.fixture(scope="module")
def llama4_path(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("llama4"), num_layers=4)


@pytest.fixture(scope="module")
def tokenizer(llama4_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama4_path)


def build(path, trunk_layers=2, **kwargs):
    model = DMoERMForSequenceClassification.from_backbone(path, CATEGORIES, trunk_layers=trunk_layers, **kwargs)
    randomize_adapters(model)
    for head in [model.router_head, *model.value_heads.values(), *model.task_heads.values()]:
        torch.nn.init.normal_(head.weight, std=0.5)
    return model.eval()


def batch_of(tokenizer, texts=TEXTS, side="left"):
    tokenizer.padding_side = side
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = "right"


def unsplit(model, fn):
    """``fn()`` computed by the full backbone forward (no trunk/branch split), same weights."""
    trunk = model.config.trunk_layers
    model.config.trunk_layers = 0
    try:
        return fn()
    finally:
        model.config.trunk_layers = trunk


def test_adapters_live_only_above_the_trunk(llama4_path):
    model = build(llama4_path, trunk_layers=3)
    full = build(llama4_path, trunk_layers=0)
    lora = [name for name, _ in model.named_parameters() if ".lora_" in name]
    assert lora and all(".layers.3." in name for name in lora)
    counts, full_counts = model.num_parameters_by_part(), full.num_parameters_by_part()
    assert counts["base"] == full_counts["base"]
    assert counts["adapters"] * 4 == full_counts["adapters"]  # 1 of 4 layers carries adapters
    for config in model.backbone.peft_config.values():
        assert list(config.layers_to_transform) == [3] and config.layers_pattern == "layers"


@pytest.mark.parametrize("batching", ["sequential", "mixed"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_split_forward_equals_the_full_forward(llama4_path, tokenizer, batching, side):
    model = build(llama4_path, expert_batching=batching)
    batch = batch_of(tokenizer, side=side)
    with torch.no_grad():
        split = model(**batch)
        reference = unsplit(model, lambda: model(**batch))
    assert split.category_ids.unique().numel() == 2  # both categories (and so both expert groups) are exercised
    torch.testing.assert_close(split.router_logits, reference.router_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.logits, reference.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        split.capability_rewards, reference.capability_rewards, rtol=1e-5, atol=1e-5, equal_nan=True
    )
    # Rewards depend on the experts' adapters (which live only above the trunk), not only on the trunk.
    features = model.compute_expert_features(batch["input_ids"], batch["attention_mask"], "objective_qa")
    assert not torch.allclose(features[:, :32], features[:, 32:64])


def test_bert_encoder_split_equals_the_full_forward(tmp_path):
    from transformers import AutoTokenizer

    path = make_tiny_bert(tmp_path / "bert4", num_layers=4)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = build(path, trunk_layers=1)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, unsplit(model, lambda: model(**batch)).logits)


def test_the_trunk_runs_once_per_forward(llama4_path, tokenizer):
    model = build(llama4_path)
    layers = model.backbone.get_base_model().layers
    calls = {0: 0, 1: 0, 2: 0, 3: 0}
    for index, layer in enumerate(layers):
        layer.register_forward_hook(lambda *args, i=index: calls.__setitem__(i, calls[i] + 1))
    with torch.no_grad():
        model(**batch_of(tokenizer), categories="objective_qa")
    assert calls == {0: 1, 1: 1, 2: 3, 3: 3}  # trunk once; the 3 experts above it (no router: category given)
    calls.update({0: 0, 1: 0, 2: 0, 3: 0})
    with torch.no_grad():
        out = model(**batch_of(tokenizer))  # routed: router + both categories' experts (3 + 2)
    assert out.category_ids.unique().numel() == 2
    assert calls == {0: 1, 1: 1, 2: 6, 3: 6}
    assert layers is model.backbone.get_base_model().layers  # the layer list is restored after each call


STAGES = [
    ("router", {}, "router_head."),
    ("task", {"category": "chitchat"}, "task_heads.chitchat."),
    ("capability", {"category": "objective_qa", "capability": "logic"}, "value_heads.objective_qa__logic."),
]


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("stage,selector,head", STAGES, ids=[s[0] for s in STAGES])
def test_training_gradients_equal_the_full_forward(llama4_path, tokenizer, stage, selector, head, checkpointing):
    model = build(llama4_path)
    if checkpointing:
        model.gradient_checkpointing_enable()
    trainable = model.set_training_stage(stage, **selector)
    assert trainable and not any(".layers.0." in n or ".layers.1." in n for n in trainable)  # nothing in the trunk
    model.train()
    model.config.lora_dropout = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = batch_of(tokenizer, side="right")

    def gradients():
        model.zero_grad(set_to_none=True)
        model(**batch).logits.square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    split, reference = gradients(), unsplit(model, gradients)
    assert set(split) == set(reference) == set(trainable)
    assert any(head in n for n in split) and any(".lora_A." in n and split[n].abs().sum() > 0 for n in split)
    for name in split:
        torch.testing.assert_close(split[name], reference[name], rtol=1e-4, atol=1e-6)


def test_save_load_and_plain_peft_loading(llama4_path, tokenizer, tmp_path):
    import dmoerm_trl  # noqa: F401  (registers the Auto classes)

    model = build(llama4_path)
    batch = batch_of(tokenizer)
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "rm")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert loaded.config.trunk_layers == 2
    assert "above a shared trunk of 2 adapter-free layers" in (tmp_path / "rm" / "README.md").read_text()
    from dmoerm_trl.commands.info import describe_saved_model

    info = describe_saved_model(tmp_path / "rm")
    assert info["trunk_layers"] == 2 and info["parameters"]["adapters"] == loaded.num_parameters_by_part()["adapters"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=0)
    # An expert folder is a standard PEFT adapter: plain PEFT on the base gives the hidden states DMoERM's split
    # forward pools for that expert.
    expert = model.adapter_name("objective_qa", "logic")
    peft = PeftModel.from_pretrained(
        AutoModel.from_pretrained(llama4_path), tmp_path / "rm" / "adapters" / expert
    ).eval()
    with torch.no_grad():
        hidden = peft(**batch).last_hidden_state
        pooled = model._encode(batch["input_ids"], batch["attention_mask"], None, [expert] * 4)
    torch.testing.assert_close(model._pool(hidden, batch["attention_mask"]), pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"trunk_layers": 4}, "between 0 and 3"),
        ({"trunk_layers": -1}, "int >= 0"),
        ({"trunk_layers": 2, "task_mode": "full"}, "needs task_mode='lora'"),
    ],
)
def test_bad_trunk_settings_are_refused(llama4_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DMoERMForSequenceClassification.from_backbone(llama4_path, CATEGORIES, **kwargs)


def test_layers_of_different_attention_types_are_refused(llama4_path):
    base = AutoModel.from_pretrained(llama4_path)
    base.config.layer_types = ["sliding_attention", "full_attention"] * 2
    with pytest.raises(ValueError, match="differ in attention type"):
        DMoERMForSequenceClassification.from_backbone(base, CATEGORIES, trunk_layers=2)


class IndexedLlama(LlamaModel):
    """A backbone whose layers behave by position in the list (here: a scale per index), which a split forward
    cannot reproduce; stands for architectures that index per-layer settings by enumeration order."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        out.last_hidden_state = out.last_hidden_state * len(self.layers)
        return out


def test_a_backbone_whose_split_changes_outputs_is_refused():
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    with pytest.raises(ValueError, match="changes the outputs"):
        DMoERMForSequenceClassification.from_backbone(IndexedLlama(config), CATEGORIES, trunk_layers=2)
    assert DMoERMForSequenceClassification.from_backbone(IndexedLlama(config), CATEGORIES).config.trunk_layers == 0


def test_config_round_trip_keeps_trunk_layers():
    config = DMoERMConfig(categories=CATEGORIES, trunk_layers=3)
    assert DMoERMConfig.from_dict(config.to_dict()).trunk_layers == 3
    assert DMoERMConfig(categories=CATEGORIES).trunk_layers == 0


def test_two_threads_scoring_one_model_get_the_single_thread_results(llama4_path, tokenizer):
    # Each trunk/branch call swaps the backbone's layer list for a slice of it; without the per-backbone lock in
    # layer_window, a second thread's swap would make the first thread's call run the wrong layers.
    model = build(llama4_path)
    batches = [batch_of(tokenizer, TEXTS[:3]), batch_of(tokenizer, TEXTS[1:], side="right")]
    with torch.no_grad():
        expected = [model(**batch).logits for batch in batches]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def score(worker: int) -> None:
        try:
            with torch.no_grad():
                for _ in range(15):
                    results[worker].append(model(**batches[worker]).logits)
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=score, args=(worker,)) for worker in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for worker in (0, 1):
        assert len(results[worker]) == 15
        for logits in results[worker]:
            torch.testing.assert_close(logits, expected[worker], rtol=0, atol=0)
    _, _, layers = decoder_layers(model.backbone)
    assert len(layers) == 4  # the full layer list is back


# ------------------------------------------------------------------ router_mode="trunk": the router head on the trunk
# The reference for the router's features is computed independently of the split machinery: the plain backbone's
# output_hidden_states at layer L (the output of the bottom L layers), pooled and layer-normalised.


def build_trunk_router(path, trunk_layers=3, **kwargs):
    return build(path, trunk_layers=trunk_layers, router_mode="trunk", **kwargs)


def reference_router_logits(model, path, batch, trunk_layers, pooling):
    plain = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        mask = batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = plain(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, output_hidden_states=True
        ).hidden_states[trunk_layers]
        pooled = model._pool(hidden, mask, pooling)
        return model.router_head(F.layer_norm(pooled, pooled.shape[-1:]))


def test_trunk_router_needs_a_trunk():
    with pytest.raises(ValueError, match="router_mode='trunk'.*trunk_layers > 0"):
        DMoERMConfig(categories=CATEGORIES, router_mode="trunk", trunk_layers=0)


def test_trunk_router_pools_the_token_mean_by_default():
    def router_pooling(**kwargs):
        return DMoERMConfig(categories=CATEGORIES, trunk_layers=1, **kwargs).router_pooling

    assert router_pooling(router_mode="trunk") == "mean"
    assert router_pooling(router_mode="trunk", router_pooling="last") == "last"
    assert router_pooling(router_mode="lora") is None


def test_training_config_refuses_a_trunk_router_without_a_trunk():
    from dmoerm_trl.trainers.training_config import DMoERMModelArguments

    with pytest.raises(ValueError, match="router_mode: trunk.*trunk_layers > 0"):
        DMoERMModelArguments(tiny_backbone="llama", router_mode="trunk")
    assert DMoERMModelArguments(tiny_backbone="llama", router_mode="trunk", trunk_layers=1).router_mode == "trunk"


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_router_reads_the_trunk_output(llama4_path, tokenizer, pooling, side):
    model = build_trunk_router(llama4_path, router_pooling=pooling)
    batch = batch_of(tokenizer, side=side)
    with torch.no_grad():
        out = model(**batch)
        routed = model.route(batch["input_ids"], batch["attention_mask"])
    expected = reference_router_logits(model, llama4_path, batch, 3, pooling)
    torch.testing.assert_close(out.router_logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(routed, expected, rtol=1e-4, atol=1e-5)
    assert out.category_ids.tolist() == expected.argmax(-1).tolist()


def test_no_router_adapter_and_no_router_pass(llama4_path, tokenizer):
    model = build_trunk_router(llama4_path)
    assert "router" not in model.backbone.peft_config
    _, _, layers = decoder_layers(model.backbone)
    calls = {"trunk": 0, "top": 0}
    handles = [
        layers[0].register_forward_hook(lambda *a: calls.__setitem__("trunk", calls["trunk"] + 1)),
        layers[3].register_forward_hook(lambda *a: calls.__setitem__("top", calls["top"] + 1)),
    ]
    batch = batch_of(tokenizer)
    try:
        with torch.no_grad():
            out = model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    routed = [model.config.category_names[i] for i in out.category_ids.unique().tolist()]
    experts = sum(len(CATEGORIES[c]) for c in routed)
    # Trunk once; the top layer once per expert of each routed category, and never for the router.
    assert calls == {"trunk": 1, "top": experts}


def test_router_stage_trains_only_the_head(llama4_path, tokenizer):
    model = build_trunk_router(llama4_path)
    trainable = model.set_training_stage("router")
    assert trainable == ["router_head.weight", "router_head.bias"]
    model.train()
    batch = batch_of(tokenizer, side="right")
    labels = torch.tensor([0, 1, 0, 1])
    optimizer = torch.optim.Adam([model.router_head.weight, model.router_head.bias], lr=0.05)
    losses = []
    for _ in range(30):
        out = model(**batch, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("router_head"))
    model.set_training_stage(None)
    model.eval()
    with torch.no_grad():
        assert model(**batch).category_ids.tolist() == labels.tolist()


def test_save_and_load_keeps_the_trunk_router(llama4_path, tokenizer, tmp_path):
    model = build_trunk_router(llama4_path)
    batch = batch_of(tokenizer)
    with torch.no_grad():
        before = model(**batch)
    model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "adapters" / "router").exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.router_mode == "trunk" and loaded.config.trunk_layers == 3
    with torch.no_grad():
        after = loaded(**batch)
    torch.testing.assert_close(after.router_logits, before.router_logits, rtol=0, atol=0)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=0)
