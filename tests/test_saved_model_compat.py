"""A DMoERM folder saved by an earlier layout of the package (tests/fixtures/saved_dmoerm_v1/, written by
tests/fixtures/make_saved_dmoerm.py) still loads through the Auto classes and scores the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "saved_dmoerm_v1_expected.json").read_text())


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import dmoerm_trl  # noqa: F401 (registers model_type "dmoerm")

    # A copy somewhere else: the folder names its base relative to itself, so it moves as a whole.
    folder = tmp_path_factory.mktemp("moved") / "saved_dmoerm_v1"
    shutil.copytree(FIXTURES / "saved_dmoerm_v1", folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def _assert_same(results, expected):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert got["category"] == want["category"]
        assert got["reward"] == pytest.approx(want["reward"], abs=1e-5)
        if want["router_prob"] is None:
            assert got["router_prob"] is None
        else:
            assert got["router_prob"] == pytest.approx(want["router_prob"], abs=1e-5)
        assert got["capability_rewards"].keys() == want["capabilities"].keys()
        for name, value in want["capabilities"].items():
            assert got["capability_rewards"][name] == pytest.approx(value, abs=1e-5)


def test_saved_v1_folder_loads_as_dmoerm(loaded):
    from dmoerm_trl import DMoERMForSequenceClassification

    model, tokenizer = loaded
    assert isinstance(model, DMoERMForSequenceClassification)
    assert (
        json.loads((FIXTURES / "saved_dmoerm_v1" / "config.json").read_text())["base_model_name_or_path"] == "./base"
    )
    assert tokenizer.decode(model.config.assistant_opener_ids) == "<|im_start|>assistant\n"
    assert all(aggregator.is_calibrated for aggregator in model.aggregators.values())


def test_saved_v1_folder_routes_and_scores_the_same(loaded):
    model, tokenizer = loaded
    _assert_same(model.compute_rewards(EXPECTED["conversations"], tokenizer, batch_size=2), EXPECTED["routed"])


@pytest.mark.parametrize("category", sorted(EXPECTED["by_category"]))
def test_saved_v1_folder_experts_score_the_same(loaded, category):
    model, tokenizer = loaded
    results = model.compute_rewards(EXPECTED["conversations"], tokenizer, batch_size=3, categories=category)
    _assert_same(results, EXPECTED["by_category"][category])


def test_info_counts_the_v1_folder_parameters_without_its_statistics(loaded):
    from safetensors import safe_open

    from dmoerm_trl.commands.info import describe_saved_model

    model, _ = loaded
    with safe_open(str(FIXTURES / "saved_dmoerm_v1" / "dmoerm_heads.safetensors"), "pt") as handle:
        assert "dmoerm_statistics" not in handle.metadata()  # saved before the list: the aggregator's buffer names
    counted = describe_saved_model(FIXTURES / "saved_dmoerm_v1")["parameters"]
    assert counted["heads"] == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    assert counted["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "first",
    [
        "import dmoerm_trl; dmoerm_trl.DMoERMConfig",  # the configuration module loads transformers' AutoConfig
        "import dmoerm_trl.models.dmoerm._backbone",  # a helper the modeling module imports loads AutoModel
        "from dmoerm_trl.models.dmoerm.modeling_dmoerm import DMoERMForSequenceClassification",
    ],
)
def test_auto_classes_load_the_folder_whatever_is_imported_first(first):
    # In a fresh process: the Auto registration must not import a half-loaded module of the package.
    import subprocess
    import sys

    code = (
        f"{first}\nfrom transformers import AutoModelForSequenceClassification\n"
        f"model = AutoModelForSequenceClassification.from_pretrained({str(FIXTURES / 'saved_dmoerm_v1')!r})\n"
        "print(type(model).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("DMoERMForSequenceClassification")
