"""Loading options (attn_implementation honoured, the rest refused), the model card (huggingface_hub.ModelCard) and
uploads whose base a reader can get. The Hub itself does not exist here: only `HfApi.create_repo`/`create_commit`
are stubbed, everything before them runs for real, and what would be uploaded is loaded back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModel, AutoModelForSequenceClassification

from dmoerm_trl import DMoERMForSequenceClassification
from dmoerm_trl.testing_utils import randomize_adapters

# chat-templated (ChatML, the tiny tokenizer's template): the router reads the prompt, up to the assistant opener
TEXTS = [
    f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    for user, answer in [
        ("What is the capital of France?", "Paris."),
        ("How are you today?", "Fine, thanks."),
    ]
]
SNAPSHOT = "89abcdef0123456789abcdef0123456789abcdef"
STAGE_METRICS = {  # what the training pipeline's stages report (trainer bookkeeping included)
    "router": {
        "eval_accuracy": 0.95,
        "eval_loss": 0.2,
        "eval_runtime": 1.3,
        "eval_samples_per_second": 40.0,
        "epoch": 3.0,
    },
    "aggregator/chitchat": {"eval_accuracy": 0.7, "eval_steps_per_second": 5.0},
}


def _backbone_attention(model) -> str:
    return model.backbone.get_base_model().config._attn_implementation


@pytest.fixture
def saved(tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories):
    model = DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, tokenizer=tiny_tokenizer)
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_backbone(saved, tiny_llama_path, tiny_categories, implementation):
    built = DMoERMForSequenceClassification.from_backbone(
        tiny_llama_path, tiny_categories, attn_implementation=implementation
    )
    assert _backbone_attention(built) == implementation and built.config._attn_implementation == implementation
    direct = DMoERMForSequenceClassification.from_pretrained(saved, attn_implementation=implementation)
    # Through the Auto class, which folds the option into the config it passes on.
    auto = AutoModelForSequenceClassification.from_pretrained(saved, attn_implementation=implementation)
    assert _backbone_attention(direct) == implementation and _backbone_attention(auto) == implementation


def test_loading_options_that_cannot_be_honoured_are_refused(saved, tiny_llama_path, tiny_categories):
    quantization = {"load_in_4bit": True, "quant_method": "bitsandbytes"}
    with pytest.raises(ValueError, match="quantization_config= is not supported.*dtype=torch.bfloat16"):
        DMoERMForSequenceClassification.from_pretrained(saved, quantization_config=quantization)
    with pytest.raises(ValueError, match="load_in_8bit= is not supported"):
        AutoModelForSequenceClassification.from_pretrained(saved, load_in_8bit=True)
    with pytest.raises(ValueError, match=r"from_pretrained got keyword arguments it cannot honour: \['colour'\]"):
        AutoModelForSequenceClassification.from_pretrained(saved, colour="blue")
    with pytest.raises(ValueError, match=r"from_backbone got keyword arguments it cannot honour: \['colour'\]"):
        DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, colour="blue")
    with pytest.raises(ValueError, match="quantization_config= is not supported"):
        DMoERMForSequenceClassification.from_backbone(
            tiny_llama_path, tiny_categories, quantization_config=quantization
        )
    with pytest.raises(ValueError, match="trust_remote_code=True is refused"):
        DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, trust_remote_code=True)
    loaded = AutoModel.from_pretrained(tiny_llama_path)
    with pytest.raises(ValueError, match="already loaded backbone"):
        DMoERMForSequenceClassification.from_backbone(loaded, tiny_categories, attn_implementation="eager")
    # What TRL and pipelines pass still works: a dtype, device_map=None, quantization_config=None, and GRPO's
    # trust_remote_code (the policy's setting; nothing downloaded runs for a DMoERM, the backbone loads without it).
    model = AutoModelForSequenceClassification.from_pretrained(
        saved, dtype=torch.bfloat16, device_map=None, quantization_config=None, trust_remote_code=True
    )
    assert model.router_head.weight.dtype == torch.bfloat16


def _hub_cache_model(tmp_path, tiny_llama_path, tokenizer, categories):
    """A DMoERM whose base came from a hub cache snapshot (as from_backbone('org/name') leaves it)."""
    cache = tmp_path / "hub-cache"
    snapshot = cache / "models--me--tiny-base" / "snapshots" / SNAPSHOT
    shutil.copytree(tiny_llama_path, snapshot)
    model = DMoERMForSequenceClassification.from_backbone(str(snapshot), categories, tokenizer=tokenizer)
    randomize_adapters(model, seed=11)
    model.model_card_metrics = STAGE_METRICS
    return model.eval(), cache


def test_model_card_is_a_hub_model_card(tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories):
    model, _ = _hub_cache_model(tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories)
    model.save_pretrained(tmp_path / "m")
    text = (tmp_path / "m" / "README.md").read_text()
    card = ModelCard(text)
    data = card.data
    assert data.base_model == "me/tiny-base" and data.library_name == "transformers"
    assert data.pipeline_tag == "text-classification" and {"dmoerm", "reward-model", "trl"} <= set(data.tags)
    results = {result.metric_name: result for result in data.eval_results}
    assert set(results) == {"router/eval_accuracy", "aggregator/chitchat/eval_accuracy"}
    assert results["router/eval_accuracy"].metric_value == 0.95
    assert {r.metric_type for r in results.values()} == {"accuracy"}
    assert {r.task_type for r in results.values()} == {"text-classification"}
    # Numbers, not raw dicts of trainer metrics; no bookkeeping.
    assert "| router/eval_loss | 0.2000 |" in text
    for bookkeeping in ("eval_runtime", "samples_per_second", "steps_per_second", "epoch", "{'"):
        assert bookkeeping not in card.text, bookkeeping
    assert "from_pretrained(" in card.text and "compute_rewards(" in card.text and "AutoTokenizer" in card.text


def _stub_hub(monkeypatch, uploaded: Path) -> list:
    from huggingface_hub.hf_api import RepoUrl

    commits = []

    def fake_create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_create_commit(self, repo_id, operations, commit_message, **kwargs):
        commits.append((repo_id, commit_message, sorted(op.path_in_repo for op in operations)))
        for op in operations:  # keep what would be uploaded, to load it back
            target = uploaded / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, target)
        return f"https://huggingface.co/{repo_id}/commit/{len(commits)}"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    return commits


def _model_files(model) -> set[str]:
    return {"config.json", "dmoerm_heads.safetensors", "README.md", "eval_results.json"} | {
        f"adapters/{name}/{f}"
        for name in model.all_adapter_names()
        for f in ("adapter_config.json", "adapter_model.safetensors")
    }


def test_push_of_a_hub_base_model_names_the_base(
    tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories, monkeypatch
):
    model, cache = _hub_cache_model(tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories)
    commits = _stub_hub(monkeypatch, tmp_path / "uploaded")
    model.push_to_hub("me/dmoerm", tokenizer=tiny_tokenizer)
    [(repo, _, files)] = commits
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    assert repo == "me/dmoerm" and set(files) == _model_files(model) | tokenizer_files  # no base/: a hub id
    uploaded = tmp_path / "uploaded"
    config = json.loads((uploaded / "config.json").read_text())
    assert (config["base_model_name_or_path"], config["base_model_revision"]) == ("me/tiny-base", SNAPSHOT)
    assert ModelCard((uploaded / "README.md").read_text()).data.base_model == "me/tiny-base"
    assert 'from_pretrained("me/dmoerm")' in (uploaded / "README.md").read_text()
    # A reader's machine: the base comes by hub id and commit (here from its offline cache).
    reloaded = AutoModelForSequenceClassification.from_pretrained(uploaded, cache_dir=str(cache))
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_push_of_a_local_base_model_needs_the_base(
    tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories, monkeypatch
):
    model = DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, tokenizer=tiny_tokenizer)
    randomize_adapters(model, seed=12)
    model.eval()
    commits = _stub_hub(monkeypatch, tmp_path / "uploaded")
    with pytest.raises(ValueError, match="local folder, which a reader of me/dmoerm cannot download.*save_base=True"):
        model.push_to_hub("me/dmoerm")
    assert commits == []
    model.push_to_hub("me/dmoerm", save_base=True)
    expected = (_model_files(model) - {"eval_results.json"}) | {"base/config.json", "base/model.safetensors"}
    assert set(commits[0][2]) == expected
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "uploaded")
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert "saved in this repository (`base/`)" in (tmp_path / "uploaded" / "README.md").read_text()


def test_dmoerm_push_says_what_the_reader_needs(
    tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories, monkeypatch, capsys
):
    from huggingface_hub import constants

    from dmoerm_trl.cli import main

    model, cache = _hub_cache_model(tmp_path, tiny_llama_path, tiny_tokenizer, tiny_categories)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # this machine's hub cache holds the base
    model.save_pretrained(tmp_path / "hub-base")
    tiny_tokenizer.save_pretrained(tmp_path / "hub-base")
    local = DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, tokenizer=tiny_tokenizer)
    local.save_pretrained(tmp_path / "local-base")
    commits = _stub_hub(monkeypatch, tmp_path / "uploaded")
    assert main(["push", str(tmp_path / "hub-base"), "me/a"]) == 0
    out = capsys.readouterr().out
    assert "readers need the base model me/tiny-base" in out and len(commits) == 1
    assert "tokenizer.json" in commits[0][2] and "base/model.safetensors" not in commits[0][2]
    assert main(["push", str(tmp_path / "local-base"), "me/b"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "add --save-base" in err and "Traceback" not in err
    assert len(commits) == 1
    assert main(["push", str(tmp_path / "local-base"), "me/b", "--save-base"]) == 0
    assert "base/model.safetensors" in commits[1][2]
    assert "the base model was uploaded with it" in capsys.readouterr().out


def test_text_classification_pipeline_still_loads_a_folder(saved, tiny_tokenizer):
    """transformers' pipeline passes its own loading options (_from_pipeline, dtype, ...): none may be refused."""
    from transformers import pipeline

    tiny_tokenizer.save_pretrained(saved)
    scorer = pipeline("text-classification", model=str(saved), function_to_apply="none", dtype=torch.float32)
    model = AutoModelForSequenceClassification.from_pretrained(saved)
    batch = tiny_tokenizer(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits[0, 0].item()
    assert scorer(TEXTS[:1])[0]["score"] == pytest.approx(expected, abs=1e-5)


def test_dmoerm_push_to_an_unreachable_hub_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    folder = Path(__file__).parent / "fixtures" / "saved_dmoerm_v1"
    env = {k: v for k, v in os.environ.items() if k not in ("DMOERM_TRACEBACK", "HF_TOKEN")}
    env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="hf_not_a_real_token_0123456789")
    result = subprocess.run(
        [sys.executable, "-m", "dmoerm_trl.cli", "push", str(folder), "me/tiny", "--save-base"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("dmoerm push: error: the upload to me/tiny failed (")
    assert "hf_not_a_real_token" not in result.stderr


def test_dmoerm_push_takes_the_flag_spelling_too(capsys):
    from dmoerm_trl.cli import main

    folder = str(Path(__file__).parent / "fixtures" / "saved_dmoerm_v1")
    # the flags reach the same checks as the positional form (here: a local base needs --save-base)
    assert main(["push", "--model", folder, "--repo_id", "me/tiny"]) == 2
    assert "which a reader of me/tiny cannot download; add --save-base" in capsys.readouterr().err
    assert main(["push", folder]) == 2
    assert "--repo_id is missing: dmoerm push MODEL_DIR REPO_ID, or --model" in capsys.readouterr().err
    assert main(["push", folder, "me/tiny", "--model", folder]) == 2
    assert "--model is given twice" in capsys.readouterr().err
