"""Fixtures for the RL tests: tiny policy, gold/proxy reward models, a DMoERM and prompts, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def rl_assets(tmp_path_factory):
    from dmoerm_trl.rl.tiny_assets import make_tiny_rl_assets

    return make_tiny_rl_assets(tmp_path_factory.mktemp("tiny-rl"), num_prompts=24)


@pytest.fixture(scope="session")
def policy_tokenizer(rl_assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(rl_assets["policy"], padding_side="left")


@pytest.fixture
def policy(rl_assets):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(rl_assets["policy"])


def _load_rm(path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import dmoerm_trl  # noqa: F401

    return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture
def gold(rl_assets):
    return _load_rm(rl_assets["gold"])


@pytest.fixture
def proxies(rl_assets):
    return [_load_rm(p) for p in rl_assets["proxies"]]


@pytest.fixture
def dmoerm(rl_assets):
    return _load_rm(rl_assets["dmoerm"])


@pytest.fixture(scope="session")
def prompts(rl_assets):
    from dmoerm_trl.rl.recipe_args import load_prompts

    return load_prompts(rl_assets["prompts"])
