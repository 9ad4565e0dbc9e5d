"""The pipeline with a shared trunk (``--trunk_layers``): every stage trains only above the trunk."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from trainer_helpers import train_one_category


def test_pipeline_trains_every_stage_above_the_trunk(tmp_path, one_thread):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import dmoerm_trl  # noqa: F401

    output_dir = tmp_path / "run"
    train_one_category(
        output_dir, "chitchat", "empathy_ability", "--trunk_layers", "2", "--tiny_backbone_num_layers", "3"
    )
    # Each adapter stage trained LoRA weights of the top layer only (layers 0-1 are the trunk)
    for stage in ("router", "task__chitchat", "capability__chitchat__proactivity"):
        weights = load_file(output_dir / "stages" / stage / "final.safetensors")
        lora = [name for name in weights if ".lora_" in name]
        assert lora and all(".layers.2." in name for name in lora), (stage, lora[:3])

    model = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert model.config.trunk_layers == 2
    batch = tokenizer(
        ["I feel tired after work. Sorry to hear that, rest well.", "What is 3 plus 4? 7."],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        split = model(**batch, categories="chitchat").logits
        model.config.trunk_layers = 0  # the same weights through the unsplit backbone
        full = model(**batch, categories="chitchat").logits
    torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-5)


def test_pipeline_with_the_router_on_the_trunk(tmp_path, one_thread):
    import json

    from transformers import AutoModelForSequenceClassification

    import dmoerm_trl  # noqa: F401

    output_dir = tmp_path / "run"
    train_one_category(
        output_dir,
        "chitchat",
        "empathy_ability",
        "--trunk_layers",
        "2",
        "--tiny_backbone_num_layers",
        "3",
        "--router_mode",
        "trunk",
    )
    # The router stage trained the head alone: no LoRA weights, no router adapter folder
    router = load_file(output_dir / "stages" / "router" / "final.safetensors")
    assert router and all(name.startswith("router_head.") for name in router), sorted(router)[:5]
    assert not (output_dir / "adapters" / "router").exists()
    model = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    assert (model.config.router_mode, model.config.trunk_layers, model.config.router_pooling) == ("trunk", 2, "mean")
    torch.testing.assert_close(model.router_head.weight, router["router_head.weight"], rtol=0, atol=0)
    state = json.loads((output_dir / "pipeline_state.json").read_text())["stages"]["router"]
    assert state["status"] == "done"
