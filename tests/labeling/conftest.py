"""Fixtures for the labeling tests (helpers live in labeling_helpers.py): the ranked data set, and `serve-judge`
servers on the tiny local judge model."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from labeling_helpers import JUDGE_NAME, make_labeling_data

from dmoerm_trl.labeling.judge_server import start_judge_server

# Every test judge server: a free port on 127.0.0.1, the tiny judge's served name, short answers.
JUDGE_OPTIONS = {"port": 0, "model_name": JUDGE_NAME, "max_new_tokens": 24}


@pytest.fixture(scope="session")
def labeling_data(tmp_path_factory):
    """12 ranked records (3 candidates, 1-3 turns) in two categories, with known per-capability scores."""
    return make_labeling_data(tmp_path_factory.mktemp("labeling-data"))


@pytest.fixture(scope="session")
def judge_model_path(tiny_llama_path, tmp_path_factory):
    """The tiny Llama with a 1024-token context (RoPE: no weight depends on it), long enough for judge prompts."""
    path = tmp_path_factory.mktemp("tiny-judge")
    for file in os.listdir(tiny_llama_path):
        shutil.copy(os.path.join(tiny_llama_path, file), path / file)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    return str(path)


@pytest.fixture(scope="module")
def judge_server(judge_model_path):
    """One judge server shared by a module's tests (requests capped at 20,000 bytes)."""
    server = start_judge_server(judge_model_path, **JUDGE_OPTIONS, max_request_bytes=20_000)
    yield server
    server.stop()


@pytest.fixture
def start_judge(judge_model_path):
    """``start_judge(**options)`` starts a judge server of the test's own (``options`` as ``start_judge_server``'s,
    over ``JUDGE_OPTIONS``); every one is stopped when the test ends, passed or failed (stopping twice is fine)."""
    started = []

    def start(**options):
        started.append(start_judge_server(judge_model_path, **{**JUDGE_OPTIONS, **options}))
        return started[-1]

    yield start
    for server in started:
        server.stop()
