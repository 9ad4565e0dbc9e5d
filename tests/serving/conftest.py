"""Fixtures for the serving tests: tiny reward models (a DMoERM, a plain Llama RM) and real servers for them."""

from __future__ import annotations

import pytest
import torch
from serving_helpers import ServerProcess, chat_texts

API_KEY = "test-secret-token-5f2c9a"  # only ever in the strict server's environment


@torch.no_grad()
def spread_router(model, tokenizer, texts) -> None:
    """Point the router head along the main direction of variation of its (centred) input features on ``texts``, so
    that texts split over the two categories (a random tiny router sends everything to one category)."""
    captured = []
    hook = model.router_head.register_forward_hook(lambda module, args, out: captured.append(args[0].float()))
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        model.route(batch["input_ids"], batch["attention_mask"])
    finally:
        hook.remove()
    features = captured[0]
    mean = features.mean(0)
    direction = torch.linalg.svd(features - mean, full_matrices=False).Vh[0]
    weight = torch.stack([direction, -direction]) * (10.0 / (features - mean).matmul(direction).std())
    model.router_head.weight.copy_(weight)
    model.router_head.bias.copy_(-weight.matmul(mean))


@pytest.fixture(scope="session")
def serve_assets(tmp_path_factory):
    """The tiny RL assets; the DMoERM's router is spread (see ``spread_router``) so that routing on the prompt alone
    visibly differs from routing on the full text."""
    from transformers import AutoTokenizer

    from dmoerm_trl import DMoERMForSequenceClassification
    from dmoerm_trl.rl.tiny_assets import make_tiny_rl_assets, tiny_prompts

    assets = make_tiny_rl_assets(tmp_path_factory.mktemp("serve-assets"), num_proxies=0, num_prompts=16)
    model = DMoERMForSequenceClassification.from_pretrained(assets["dmoerm"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(assets["dmoerm"])
    texts, prompt_texts, _ = chat_texts(tokenizer, tiny_prompts(16))
    spread_router(model, tokenizer, texts + sorted(set(prompt_texts)))
    model.save_pretrained(assets["dmoerm"])
    return assets


def _load(path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import dmoerm_trl  # noqa: F401  (registers the dmoerm model type)

    return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def dmoerm_local(serve_assets):
    """The served DMoERM, loaded in process: ``(model, tokenizer)``."""
    return _load(serve_assets["dmoerm"])


@pytest.fixture(scope="session")
def gold_local(serve_assets):
    """The served plain sequence-classification RM (a Llama with a score head), in process."""
    return _load(serve_assets["gold"])


@pytest.fixture(scope="session")
def servers(serve_assets, tmp_path_factory):
    """Three servers started together (startup is mostly imports): the DMoERM, the plain RM, and a strict one
    (bearer token, small limits, a tiny queue and a long batching wait) for the error and back-pressure cases.
    One torch thread each: on this shared CPU more threads make every forward pass many times slower."""
    logs = tmp_path_factory.mktemp("serve-logs")
    started = {
        "dmoerm": ServerProcess(serve_assets["dmoerm"], "--threads", "1", log_dir=logs, name="dmoerm"),
        "gold": ServerProcess(
            serve_assets["gold"], "--threads", "1", "--max-batch-size", "16", log_dir=logs, name="gold"
        ),
        "strict": ServerProcess(
            serve_assets["dmoerm"],
            "--threads",
            "1",
            "--max-items-per-request",
            "8",
            "--max-queue",
            "8",
            "--max-request-bytes",
            "4000",
            "--max-length",
            "64",
            "--max-batch-size",
            "64",
            "--max-wait-ms",
            "3000",
            log_dir=logs,
            name="strict",
            env={"DMOERM_SERVE_API_KEY": API_KEY},
        ),
    }
    for server in started.values():
        server.start()
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.terminate()
