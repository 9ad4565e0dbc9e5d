"""Model folders that move: the base named by hub id or by a path relative to the folder, a clear error when it is
missing, folders of the previous format, and the category/capability order checked at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from dmoerm_trl import DMoERMForSequenceClassification
from dmoerm_trl.models.dmoerm._base_reference import MissingBaseModelError
from dmoerm_trl.testing_utils import randomize_adapters

# chat-templated (ChatML, the tiny tokenizer's template): the router reads the prompt, up to the assistant opener
TEXTS = [
    f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    for user, answer in [
        ("What is the capital of France?", "Paris."),
        ("How are you today?", "Fine, thanks."),
        ("hi", "hello"),
    ]
]
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def _build(backbone_path, categories, tokenizer):
    model = DMoERMForSequenceClassification.from_backbone(str(backbone_path), categories, tokenizer=tokenizer)
    randomize_adapters(model, seed=5)
    with torch.no_grad():
        for aggregator in model.aggregators.values():
            aggregator.out.bias.fill_(0.3)
    return model.eval()


def _scores(model, tokenizer):
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model(**batch)
    return out.logits, out.category_ids


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.fixture
def folder_with_inner_base(tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories):
    """A run folder holding its own base (as `dmoerm train` with tiny_backbone does: <output_dir>/backbone)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_llama_path, run / "backbone")
    model = _build(run / "backbone", tiny_categories, tiny_tokenizer)
    model.save_pretrained(run)
    return run, _scores(model, tiny_tokenizer)


def test_a_moved_folder_loads_and_scores_the_same(folder_with_inner_base, tmp_path, tiny_tokenizer):
    run, (logits, categories) = folder_with_inner_base
    assert _config(run)["base_model_name_or_path"] == "./backbone"  # relative to the folder, not absolute
    moved = tmp_path / "elsewhere" / "moved-run"
    moved.parent.mkdir()
    shutil.move(str(run), str(moved))
    assert not run.exists()
    reloaded = AutoModelForSequenceClassification.from_pretrained(moved)
    moved_logits, moved_categories = _scores(reloaded, tiny_tokenizer)
    torch.testing.assert_close(moved_logits, logits, rtol=0, atol=0)
    assert moved_categories.tolist() == categories.tolist()
    # Tools that take the tokenizer from the base find it in the moved folder (not from the working directory).
    from dmoerm_trl.evaluation import load_reward_model

    _, tokenizer = load_reward_model(moved, device="cpu")
    assert tokenizer.get_vocab() == tiny_tokenizer.get_vocab()
    # Saved again in place, the folder still names its base relative to itself.
    reloaded.save_pretrained(moved)
    assert _config(moved)["base_model_name_or_path"] == "./backbone"


def test_a_copy_whose_base_is_missing_fails_clearly(folder_with_inner_base, tmp_path):
    run, _ = folder_with_inner_base
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("backbone"))
    # The original (with its base) still exists: the copy must not silently load that base.
    with pytest.raises(MissingBaseModelError) as err:
        DMoERMForSequenceClassification.from_pretrained(copy)
    message = str(err.value)
    assert "./backbone" in message and str(copy / "backbone") in message
    assert "base_model_name_or_path=" in message and "save_base=True" in message
    # The fix the message names works.
    reloaded = DMoERMForSequenceClassification.from_pretrained(copy, base_model_name_or_path=str(run / "backbone"))
    assert reloaded.config.category_names == ["objective_qa", "chitchat"]


def test_a_hub_cache_base_is_saved_as_its_hub_id(tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories):
    cache = tmp_path / "hub-cache"
    snapshot = cache / "models--me--tiny-base" / "snapshots" / SNAPSHOT
    shutil.copytree(tiny_llama_path, snapshot)
    model = _build(snapshot, tiny_categories, tiny_tokenizer)
    model.save_pretrained(tmp_path / "m")
    config = _config(tmp_path / "m")
    assert (config["base_model_name_or_path"], config["base_model_revision"]) == ("me/tiny-base", SNAPSHOT)
    adapter = json.loads((tmp_path / "m" / "adapters" / "router" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "me/tiny-base" and adapter["revision"] == SNAPSHOT
    # Another machine: the base comes from the hub (here its offline cache) by id and commit.
    reloaded = DMoERMForSequenceClassification.from_pretrained(tmp_path / "m", cache_dir=str(cache))
    torch.testing.assert_close(_scores(reloaded, tiny_tokenizer)[0], _scores(model, tiny_tokenizer)[0], rtol=0, atol=0)
    with pytest.raises(MissingBaseModelError, match="could not load its base model 'me/tiny-base'"):
        DMoERMForSequenceClassification.from_pretrained(tmp_path / "m", cache_dir=str(tmp_path / "empty-cache"))
    # Built on the hub id itself: the commit it resolved to is pinned, so a later change of the base repo cannot
    # silently change the rewards.
    (cache / "models--me--tiny-base" / "refs").mkdir()
    (cache / "models--me--tiny-base" / "refs" / "main").write_text(SNAPSHOT)
    by_id = DMoERMForSequenceClassification.from_backbone("me/tiny-base", tiny_categories, cache_dir=str(cache))
    assert (by_id.config.base_model_name_or_path, by_id.config.base_model_revision) == ("me/tiny-base", SNAPSHOT)


def _to_previous_format(folder: Path, absolute_base: str) -> None:
    """What save_pretrained wrote before base references and heads metadata: an absolute base path, no revision
    key, a heads file with only {"format": "pt"} metadata."""
    config = _config(folder)
    config["base_model_name_or_path"] = absolute_base
    del config["base_model_revision"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    heads = load_file(folder / "dmoerm_heads.safetensors")
    save_file(heads, folder / "dmoerm_heads.safetensors", metadata={"format": "pt"})


def test_a_folder_of_the_previous_format_still_loads(tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories):
    model = _build(tiny_llama_path, tiny_categories, tiny_tokenizer)
    model.save_pretrained(tmp_path / "old")
    _to_previous_format(tmp_path / "old", str(Path(tiny_llama_path).resolve()))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "old")
    torch.testing.assert_close(_scores(reloaded, tiny_tokenizer)[0], _scores(model, tiny_tokenizer)[0], rtol=0, atol=0)


def test_a_previous_format_folder_on_a_hub_cache_base_loads_elsewhere(
    tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories
):
    cache = tmp_path / "hub-cache"
    snapshot = cache / "models--me--tiny-base" / "snapshots" / SNAPSHOT
    shutil.copytree(tiny_llama_path, snapshot)
    model = _build(snapshot, tiny_categories, tiny_tokenizer)
    model.save_pretrained(tmp_path / "old")
    # Saved on another machine, whose hub cache lived elsewhere: the absolute path does not exist here.
    elsewhere = f"/home/someone/.cache/huggingface/hub/models--me--tiny-base/snapshots/{SNAPSHOT}"
    _to_previous_format(tmp_path / "old", elsewhere)
    reloaded = DMoERMForSequenceClassification.from_pretrained(tmp_path / "old", cache_dir=str(cache))
    torch.testing.assert_close(_scores(reloaded, tiny_tokenizer)[0], _scores(model, tiny_tokenizer)[0], rtol=0, atol=0)


def test_a_moved_folder_of_the_previous_format_names_its_missing_base(folder_with_inner_base, tmp_path):
    run, _ = folder_with_inner_base
    _to_previous_format(run, str((run / "backbone").resolve()))  # the old pipeline wrote this absolute path
    moved = tmp_path / "moved"
    shutil.move(str(run), str(moved))
    with pytest.raises(MissingBaseModelError) as err:
        DMoERMForSequenceClassification.from_pretrained(moved)
    message = str(err.value)
    assert str(run / "backbone") in message and "does not exist" in message
    assert f"base_model_name_or_path={str(moved / 'backbone')!r}" in message  # the folder that is there


def test_edited_category_or_capability_order_is_refused(tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories):
    model = _build(tiny_llama_path, tiny_categories, tiny_tokenizer)
    model.save_pretrained(tmp_path / "m")
    original = _config(tmp_path / "m")
    edits = {
        "capabilities reversed": lambda c: c["categories"]["objective_qa"].reverse(),
        "categories reversed": lambda c: c["category_order"].reverse(),
    }
    for what, edit in edits.items():
        config = json.loads(json.dumps(original))
        edit(config)
        (tmp_path / "m" / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match="another order") as err:
            AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
        assert "dmoerm_heads.safetensors" in str(err.value) and "restore the saved order" in str(err.value), what
    (tmp_path / "m" / "config.json").write_text(json.dumps(original))
    # Extra metadata keys (e.g. calibration statistics added later) do not disturb the check.
    path = tmp_path / "m" / "dmoerm_heads.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    save_file(load_file(path), path, metadata={**metadata, "dmoerm_calibration": json.dumps({"objective_qa": [0, 1]})})
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(_scores(reloaded, tiny_tokenizer)[0], _scores(model, tiny_tokenizer)[0], rtol=0, atol=0)
