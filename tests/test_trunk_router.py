"""``router_mode="trunk"``: the router head reads the shared trunk's output, so routing costs no layer pass of its own.

The reference for the router's features is computed independently of the split machinery: the plain backbone's
``output_hidden_states`` at layer ``L`` (the output of the bottom ``L`` layers), pooled and layer-normalised.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForSequenceClassification

from dmoerm_trl import DMoERMConfig, DMoERMForSequenceClassification
from dmoerm_trl.testing_utils import make_tiny_llama, randomize_adapters
from dmoerm_trl.trunk import decoder_layers

CATEGORIES = {"objective_qa": ["correctness", "logic", "depth"], "chitchat": ["empathy", "fluency"]}
TEXTS = [
    "What is the capital of France? Paris.",
    "How are you today? I am fine, thank you.",
    "Solve 12 * 7. The answer is 84.",
    "hi",
]


@pytest.fixture(scope="module")
def llama4_path(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("llama4-router"), num_layers=4)


@pytest.fixture(scope="module")
def tokenizer(llama4_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama4_path)


def build(path, trunk_layers=3, **kwargs):
    model = DMoERMForSequenceClassification.from_backbone(
        path, CATEGORIES, trunk_layers=trunk_layers, router_mode="trunk", **kwargs
    )
    randomize_adapters(model)
    for head in [model.router_head, *model.value_heads.values()]:
        torch.nn.init.normal_(head.weight, std=0.5)
    return model.eval()


def batch_of(tokenizer, side="left"):
    tokenizer.padding_side = side
    try:
        return tokenizer(TEXTS, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = "right"


def reference_router_logits(model, path, batch, trunk_layers, pooling):
    plain = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        mask = batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = plain(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions,
                       output_hidden_states=True).hidden_states[trunk_layers]
        pooled = model._pool(hidden, mask, pooling)
        return model.router_head(F.layer_norm(pooled, pooled.shape[-1:]))


def test_trunk_router_needs_a_trunk():
    with pytest.raises(ValueError, match="router_mode='trunk'.*trunk_layers > 0"):
        DMoERMConfig(categories=CATEGORIES, router_mode="trunk", trunk_layers=0)


def test_trunk_router_pools_the_token_mean_by_default():
    assert DMoERMConfig(categories=CATEGORIES, router_mode="trunk", trunk_layers=1).router_pooling == "mean"
    assert DMoERMConfig(categories=CATEGORIES, router_mode="trunk", trunk_layers=1, router_pooling="last").router_pooling == "last"
    assert DMoERMConfig(categories=CATEGORIES, router_mode="lora", trunk_layers=1).router_pooling is None


def test_training_config_refuses_a_trunk_router_without_a_trunk():
    from dmoerm_trl.trainers.training_config import DMoERMModelArguments

    with pytest.raises(ValueError, match="router_mode: trunk.*trunk_layers > 0"):
        DMoERMModelArguments(tiny_backbone="llama", router_mode="trunk")
    assert DMoERMModelArguments(tiny_backbone="llama", router_mode="trunk", trunk_layers=1).router_mode == "trunk"


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_router_reads_the_trunk_output(llama4_path, tokenizer, pooling, side):
    model = build(llama4_path, router_pooling=pooling)
    batch = batch_of(tokenizer, side)
    with torch.no_grad():
        out = model(**batch)
        routed = model.route(batch["input_ids"], batch["attention_mask"])
    expected = reference_router_logits(model, llama4_path, batch, 3, pooling)
    torch.testing.assert_close(out.router_logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(routed, expected, rtol=1e-4, atol=1e-5)
    assert out.category_ids.tolist() == expected.argmax(-1).tolist()


def test_no_router_adapter_and_no_router_pass(llama4_path, tokenizer):
    model = build(llama4_path)
    assert "router" not in model.backbone.peft_config
    _, _, layers = decoder_layers(model.backbone)
    calls = {"trunk": 0, "top": 0}
    handles = [layers[0].register_forward_hook(lambda *a: calls.__setitem__("trunk", calls["trunk"] + 1)),
               layers[3].register_forward_hook(lambda *a: calls.__setitem__("top", calls["top"] + 1))]
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
    model = build(llama4_path)
    trainable = model.set_training_stage("router")
    assert trainable == ["router_head.weight", "router_head.bias"]
    model.train()
    batch = batch_of(tokenizer, "right")
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
    model = build(llama4_path)
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
