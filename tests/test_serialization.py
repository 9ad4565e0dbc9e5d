"""Saving and loading a DMoERM: safetensors files, standard PEFT adapter folders, Auto classes, the Hub upload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

import dmoerm_trl
from dmoerm_trl import DMoERMForSequenceClassification
from dmoerm_trl.testing_utils import make_tiny_llama, randomize_adapters

# One-turn ChatML conversations (the tiny tokenizer's template): the router reads up to the assistant opener.
TEXTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n",
    "<|im_start|>user\nHow are you today?<|im_end|>\n<|im_start|>assistant\nFine, thanks.<|im_end|>\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n",
]


@pytest.fixture
def model_and_batch(tiny_llama_path, tiny_tokenizer, tiny_categories):
    model = DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, tokenizer=tiny_tokenizer)
    randomize_adapters(model, seed=3)
    with torch.no_grad():  # heads too, so a head that is not saved or loaded shows up
        for head in model.aggregators.values():
            head.act.weight.fill_(0.1)
    model.eval()
    return model, tiny_tokenizer(TEXTS, return_tensors="pt", padding=True, add_special_tokens=False)


def file_set(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_round_trip_with_auto_class_and_no_remote_code(model_and_batch, tmp_path):
    model, batch = model_and_batch
    expected = model(**batch)
    model.save_pretrained(tmp_path)
    files = file_set(tmp_path)
    assert {"config.json", "dmoerm_heads.safetensors", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".pth")) for f in files)
    assert not any(f.startswith("base/") for f in files)  # base referenced by path, not copied
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "dmoerm" and config["category_order"] == ["objective_qa", "chitchat"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert isinstance(reloaded, DMoERMForSequenceClassification)
    out = reloaded(**batch)
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.capability_rewards, expected.capability_rewards, rtol=0, atol=0, equal_nan=True)
    assert out.category_ids.tolist() == expected.category_ids.tolist()


def test_info_counts_parameters_not_the_statistics_the_heads_metadata_lists(model_and_batch, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from dmoerm_trl.commands.info import describe_saved_model

    model, _ = model_and_batch
    for aggregator in model.aggregators.values():  # statistics set, as after phase 3
        aggregator.set_feature_statistics(torch.randn(4, aggregator.feature_mean.numel()))
        aggregator.set_reward_calibration(torch.tensor([0.5, 2.0]))
    model.save_pretrained(tmp_path)
    counted = describe_saved_model(tmp_path)["parameters"]
    heads = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("backbone."))
    assert counted["heads"] == heads
    assert counted["total"] == sum(p.numel() for p in model.parameters())
    path = tmp_path / "dmoerm_heads.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    listed = json.loads(metadata["dmoerm_statistics"])
    assert set(listed) == {f"aggregators.{name}" for name, _ in model.aggregators.named_buffers()}
    # info reads the list from the metadata ...
    tensors, more = load_file(path), json.dumps([*listed, "router_head.bias"])
    save_file(tensors, str(path), metadata={**metadata, "dmoerm_statistics": more})
    assert describe_saved_model(tmp_path)["parameters"]["heads"] == heads - model.router_head.bias.numel()
    # ... and a heads file saved before the list existed falls back to the aggregator's own buffer names
    save_file(tensors, str(path), metadata={k: v for k, v in metadata.items() if k != "dmoerm_statistics"})
    assert describe_saved_model(tmp_path)["parameters"]["heads"] == heads


def test_each_adapter_is_a_standard_peft_folder(model_and_batch, tmp_path, tiny_llama_path):
    from peft import PeftModel

    model, batch = model_and_batch
    model.save_pretrained(tmp_path)
    names = model.all_adapter_names()
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == sorted(names)
    name = "objective_qa__logic"
    folder = tmp_path / "adapters" / name
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    standalone = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_llama_path), folder).eval()
    hidden = standalone(**batch).last_hidden_state
    # The same adapter inside the DMoERM gives the same hidden states.
    inside = model.backbone(**batch, adapter_names=[name] * len(TEXTS)).last_hidden_state
    torch.testing.assert_close(hidden, inside)
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_llama_path


def test_save_base_makes_a_self_contained_folder(tmp_path, tiny_tokenizer, tiny_categories):
    backbone = make_tiny_llama(None, seed=7)  # built in memory: no path to reload the base from
    model = DMoERMForSequenceClassification.from_backbone(backbone, tiny_categories, tokenizer=tiny_tokenizer)
    randomize_adapters(model)
    model.eval()
    with pytest.raises(ValueError, match="save_base=True"):
        model.save_pretrained(tmp_path / "no-base")
    model.save_pretrained(tmp_path / "with-base", save_base=True)
    assert (tmp_path / "with-base" / "base" / "model.safetensors").exists()
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    reloaded = DMoERMForSequenceClassification.from_pretrained(tmp_path / "with-base")
    torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_trainer_style_save_with_a_given_state_dict(model_and_batch, tmp_path):
    model, _batch = model_and_batch
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["router_head.bias"] += 1.0  # what a gathered (e.g. ZeRO-3) state dict would carry
    model.save_pretrained(tmp_path, state_dict=state, safe_serialization=True)
    reloaded = DMoERMForSequenceClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.router_head.bias, model.router_head.bias + 1.0)


def test_load_dmoerm_weights_checks_the_config(model_and_batch, tmp_path, tiny_llama_path, tiny_tokenizer):
    model, _ = model_and_batch
    model.save_pretrained(tmp_path)
    other = DMoERMForSequenceClassification.from_backbone(
        tiny_llama_path, {"roleplay": ["immersion"]}, tokenizer=tiny_tokenizer
    )
    with pytest.raises((ValueError, FileNotFoundError), match="does not match|missing"):
        other.load_dmoerm_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved DMoERM"):
        DMoERMForSequenceClassification.from_pretrained(tmp_path / "adapters")


def test_push_to_hub_uploads_exactly_the_model_files(model_and_batch, tmp_path, monkeypatch):
    """Runs the real upload code up to the Hub's two endpoints, which are stubbed (there is no Hub here)."""
    import shutil

    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    model, batch = model_and_batch
    calls = {}
    uploaded = tmp_path / "uploaded"

    def fake_create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_create_commit(self, repo_id, operations, commit_message, **kwargs):
        calls["create_commit"] = (repo_id, commit_message)
        for op in operations:  # keep what would be uploaded, to load it back
            target = uploaded / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, target)
        return "https://huggingface.co/me/dmoerm/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    # The base is a local folder: uploaded with the model (a reader could not get it otherwise, tests/test_hub.py).
    result = model.push_to_hub("me/dmoerm", metrics={"pairwise_accuracy": 0.71}, private=True, save_base=True)
    assert calls["create_repo"][0] == "me/dmoerm" and calls["create_repo"][1]["private"] is True
    assert calls["create_commit"][0] == "me/dmoerm" and "commit" in str(result)
    expected = (
        {"config.json", "dmoerm_heads.safetensors", "README.md", "eval_results.json"}
        | {
            f"adapters/{name}/{f}"
            for name in model.all_adapter_names()
            for f in ("adapter_config.json", "adapter_model.safetensors")
        }
        | {"base/config.json", "base/model.safetensors"}
    )
    assert file_set(uploaded) == expected
    card = (uploaded / "README.md").read_text()
    assert "objective_qa" in card and "correctness, logic, depth" in card and "0.7100" in card
    assert "saved in this repository (`base/`)" in card
    reloaded = AutoModelForSequenceClassification.from_pretrained(uploaded)
    torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert reloaded.model_card_metrics == {"pairwise_accuracy": 0.71}


def test_package_import_registers_auto_classes():
    from transformers import AutoConfig

    assert AutoConfig.for_model("dmoerm", categories={"a": ["x"]}).__class__ is dmoerm_trl.DMoERMConfig
