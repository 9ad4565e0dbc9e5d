"""task_mode="full": the paper's layout, one fully fine-tuned base copy per category (phase 1 as a full fine-tune)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from dmoerm_trl import DMoERMConfig, DMoERMForSequenceClassification
from dmoerm_trl.testing_utils import randomize_adapters

# One-turn conversations in the tiny tokenizer's ChatML template: the router reads up to the assistant opener.
TEXTS = [
    (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
    ),
    "<|im_start|>user\nHow are you today?<|im_end|>\n<|im_start|>assistant\nI am fine, thank you.<|im_end|>\n",
    "<|im_start|>user\nSolve 12 * 7.<|im_end|>\n<|im_start|>assistant\nThe answer is 84.<|im_end|>\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n",
]


@pytest.fixture(params=["lora", "linear"])
def full_model(request, tiny_llama_path, tiny_tokenizer, tiny_categories):
    model = DMoERMForSequenceClassification.from_backbone(
        tiny_llama_path, tiny_categories, tokenizer=tiny_tokenizer, task_mode="full", router_mode=request.param
    )
    randomize_adapters(model)
    return model.eval()


def encode(tokenizer, texts):
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def shift_category_base(model, category: str, amount: float = 0.05) -> None:
    """Stand-in for phase 1 having changed one category's base copy."""
    with torch.no_grad():
        for name, parameter in model.category_backbones[category].named_parameters():
            if ".lora_" not in name:
                parameter.add_(amount * torch.randn_like(parameter))


def test_each_category_gets_its_own_copy_of_the_pretrained_base(full_model, tiny_llama_path, tiny_categories):
    pretrained = AutoModel.from_pretrained(tiny_llama_path).state_dict()
    assert set(full_model.category_backbones) == set(tiny_categories)
    for backbone in full_model.all_backbones():
        base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
        for key, value in base.state_dict().items():
            if ".lora_" not in key:
                assert torch.equal(value, pretrained[key.replace(".base_layer.", ".")]), key
    # copies, not shared tensors
    pointers = [b.get_base_model().embed_tokens.weight.data_ptr() for b in full_model.category_backbones.values()]
    assert len(set(pointers + [full_model.backbone.get_input_embeddings().weight.data_ptr()])) == 3
    assert not any(name.endswith("__task") for name in full_model.all_adapter_names())
    counts = full_model.num_parameters_by_part()
    base_size = sum(p.numel() for p in pretrained.values())
    assert counts["base"] == (1 + len(tiny_categories)) * base_size


@pytest.mark.parametrize("checkpointing", [False, True])
def test_task_stage_fine_tunes_every_weight_of_the_category_copy_only(full_model, tiny_tokenizer, checkpointing):
    if checkpointing:
        full_model.gradient_checkpointing_enable()
    trainable = set(full_model.set_training_stage("task", category="chitchat"))
    expected = {
        n
        for n, _ in full_model.named_parameters()
        if n.startswith("task_heads.chitchat.") or (n.startswith("category_backbones.chitchat.") and ".lora_" not in n)
    }
    assert trainable == expected and len(expected) > 10
    full_model.train()
    full_model(**encode(tiny_tokenizer, TEXTS)).logits.sum().backward()
    with_grad = {n for n, p in full_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # every weight of the copy that the loss reaches (all but unused embedding rows' parameters) gets a gradient
    assert with_grad <= expected and "task_heads.chitchat.weight" in with_grad
    assert any(".layers.0.self_attn.q_proj.base_layer.weight" in n for n in with_grad), sorted(with_grad)[:5]
    assert len(with_grad) >= len(expected) - 1


def test_experts_start_as_exactly_the_phase1_model(full_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, TEXTS)
    shift_category_base(full_model, "chitchat")
    full_model.set_training_stage("task", category="chitchat")
    with torch.no_grad():
        phase1 = full_model(**batch).logits
    full_model.init_experts_from_task("chitchat")
    for capability in ("empathy", "fluency"):
        full_model.set_training_stage("capability", category="chitchat", capability=capability)
        with torch.no_grad():
            torch.testing.assert_close(full_model(**batch).logits, phase1)
    # and the expert trains only its LoRA adapter + value head, on the category's copy
    trainable = full_model.set_training_stage("capability", category="chitchat", capability="fluency")
    assert all(".chitchat__fluency." in n or n.startswith("value_heads.chitchat__fluency.") for n in trainable)
    assert all(n.startswith(("category_backbones.chitchat.", "value_heads.")) for n in trainable)
    full_model.set_training_stage(None)


def test_a_category_reads_only_its_own_base_copy(full_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, TEXTS)
    with torch.no_grad():
        before = {c: full_model(**batch, categories=c).logits for c in ("objective_qa", "chitchat")}
        routed_before = full_model(**batch).router_logits
        shift_category_base(full_model, "chitchat")
        after = {c: full_model(**batch, categories=c).logits for c in ("objective_qa", "chitchat")}
        routed_after = full_model(**batch).router_logits
    assert torch.equal(before["objective_qa"], after["objective_qa"])
    assert not torch.allclose(before["chitchat"], after["chitchat"])
    assert torch.equal(routed_before, routed_after)  # the router runs on the original base


def test_batching_modes_and_one_at_a_time_agree(full_model, tiny_tokenizer):
    batch = encode(tiny_tokenizer, TEXTS)
    shift_category_base(full_model, "objective_qa")
    with torch.no_grad():
        full_model.config.expert_batching = "sequential"
        sequential = full_model(**batch)
        full_model.config.expert_batching = "mixed"
        mixed = full_model(**batch)
        single = [full_model(**encode(tiny_tokenizer, [t])).logits for t in TEXTS]
    torch.testing.assert_close(sequential.logits, mixed.logits)
    torch.testing.assert_close(torch.cat(single), sequential.logits, atol=1e-5, rtol=1e-4)


def test_save_and_load_keep_every_category_copy(full_model, tiny_tokenizer, tmp_path):
    from peft import PeftModel

    import dmoerm_trl  # noqa: F401
    from dmoerm_trl.commands.info import describe_saved_model

    shift_category_base(full_model, "chitchat")
    full_model.save_pretrained(tmp_path / "m")
    files = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*.safetensors")}
    assert {"category_bases/chitchat/model.safetensors", "category_bases/objective_qa/model.safetensors"} <= files
    assert not any("__task" in f for f in files)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert loaded.config.task_mode == "full"
    batch = encode(tiny_tokenizer, TEXTS)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, full_model(**batch).logits)
        assert torch.equal(
            loaded(**batch, categories="chitchat").logits, full_model(**batch, categories="chitchat").logits
        )
    # an expert folder is a standard PEFT adapter of its category's base copy
    base = AutoModel.from_config(full_model.config.get_backbone_config())
    from safetensors.torch import load_file

    base.load_state_dict(load_file(tmp_path / "m" / "category_bases" / "chitchat" / "model.safetensors"))
    peft = PeftModel.from_pretrained(base, tmp_path / "m" / "adapters" / "chitchat__empathy").eval()
    with torch.no_grad():
        features = peft(**batch).last_hidden_state
        reference = full_model._encode(
            batch["input_ids"],
            batch["attention_mask"],
            (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0),
            ["chitchat__empathy"] * 4,
            backbone=full_model.category_backbones["chitchat"],
        )
    torch.testing.assert_close(full_model._pool(features, batch["attention_mask"]), reference)
    info = describe_saved_model(tmp_path / "m")
    assert info["task_mode"] == "full"
    assert info["parameters"]["base"] == full_model.num_parameters_by_part()["base"]


def test_missing_or_foreign_category_base_is_a_clear_error(full_model, tmp_path, tiny_categories):
    full_model.save_pretrained(tmp_path / "m")
    broken = tmp_path / "missing"
    shutil.copytree(tmp_path / "m", broken)
    shutil.rmtree(broken / "category_bases" / "chitchat")
    with pytest.raises(FileNotFoundError, match="category_bases/chitchat/model.safetensors does not exist"):
        DMoERMForSequenceClassification.from_pretrained(broken)
    foreign = tmp_path / "foreign"
    shutil.copytree(tmp_path / "m", foreign)
    from safetensors.torch import load_file, save_file

    path = foreign / "category_bases" / "chitchat" / "model.safetensors"
    tensors = load_file(path)
    tensors.pop(next(k for k in tensors if "layers.1." in k))
    save_file(tensors, path)
    with pytest.raises(ValueError, match="does not match this model's backbone.*layers.1"):
        DMoERMForSequenceClassification.from_pretrained(foreign)


def test_unknown_task_mode_names_the_choices(tiny_categories):
    with pytest.raises(ValueError, match="task_mode must be one of .'lora', 'full'."):
        DMoERMConfig(categories=tiny_categories, task_mode="partial")
    config = json.loads(DMoERMConfig(categories=tiny_categories).to_json_string())
    assert config["task_mode"] == "lora"  # the default: a task adapter on the shared base
