"""Shared fixtures: tiny models and tokenizers built locally (no network), once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory):
    """A saved tiny random LlamaForCausalLM (hidden 32, 2 layers) with a ChatML BPE tokenizer beside it."""
    from dmoerm_trl.testing_utils import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory):
    """A saved tiny random BertModel (hidden 32, 2 layers) with a WordPiece tokenizer beside it."""
    from dmoerm_trl.testing_utils import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_path)


@pytest.fixture(scope="session")
def tiny_bert_tokenizer(tiny_bert_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert_path)


# Two categories with different numbers of capabilities, so layouts with padding are exercised.
TINY_CATEGORIES = {
    "objective_qa": ["correctness", "logic", "depth"],
    "chitchat": ["empathy", "fluency"],
}


@pytest.fixture
def tiny_categories():
    return {name: list(caps) for name, caps in TINY_CATEGORIES.items()}
