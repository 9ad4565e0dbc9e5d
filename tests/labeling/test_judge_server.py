"""`dmoerm serve-judge`: a real HTTP server over a tiny local causal LM, spoken to by the real `openai` client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import openai
import pytest
from labeling_helpers import http_request, judge_config, make_labeling_data

from dmoerm_trl.labeling import run_labeling
from dmoerm_trl.labeling.judge_server import API_KEY_ENV


def raw_request(server, method, path, body: bytes | None = None, headers=None):
    status, _, payload = http_request(server, method, path, body, headers)
    return status, payload


def test_openai_client_models_and_deterministic_chat(judge_server, tiny_tokenizer):
    assert judge_server.server_address[0] == "127.0.0.1"
    client = openai.OpenAI(base_url=judge_server.base_url, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny-judge"]
    messages = [{"role": "system", "content": "You judge."}, {"role": "user", "content": "Which is better, 1 or 2?"}]
    first = client.chat.completions.create(model="tiny-judge", messages=messages, temperature=0, max_tokens=6)
    second = client.chat.completions.create(model="tiny-judge", messages=messages, temperature=0, max_tokens=6)
    assert first.choices[0].message.content == second.choices[0].message.content  # greedy at temperature 0
    assert first.choices[0].message.role == "assistant" and first.object == "chat.completion"
    prompt = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert first.usage.prompt_tokens == len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= first.usage.completion_tokens <= 6
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.choices[0].finish_reason in ("stop", "length")
    capped = client.chat.completions.create(model="tiny-judge", messages=messages, temperature=0, max_tokens=1000)
    assert capped.usage.completion_tokens <= 24  # --max-new-tokens caps every request
    sampled = client.chat.completions.create(
        model="tiny-judge", messages=messages, temperature=1.0, seed=3, max_tokens=6
    )
    again = client.chat.completions.create(
        model="tiny-judge", messages=messages, temperature=1.0, seed=3, max_tokens=6
    )
    assert sampled.choices[0].message.content == again.choices[0].message.content  # seeded sampling


GOOD = {"model": "tiny-judge", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({**GOOD, "messages": []}).encode(), 400, "messages"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "model"}).encode(), 400, "model"),
        (json.dumps({**GOOD, "model": "gpt-4"}).encode(), 404, "model"),
        (json.dumps({**GOOD, "stream": True}).encode(), 400, "stream"),
        (json.dumps({**GOOD, "response_format": {"type": "json_object"}}).encode(), 400, "response_format"),
        (json.dumps({**GOOD, "messages": [{"role": "robot", "content": "hi"}]}).encode(), 400, "messages[0].role"),
        (json.dumps({**GOOD, "messages": [{"role": "user", "content": 5}]}).encode(), 400, "messages[0].content"),
        (json.dumps({**GOOD, "n": 2}).encode(), 400, "n"),
        (json.dumps({**GOOD, "temperature": 5}).encode(), 400, "temperature"),
        (json.dumps({**GOOD, "max_tokens": 0}).encode(), 400, "max_tokens"),
        (json.dumps({**GOOD, "tools": [{"type": "function"}]}).encode(), 400, "tools"),
        (json.dumps({**GOOD, "messages": [{"role": "user", "content": "word " * 1100}]}).encode(), 400, "messages"),
    ],
)
def test_bad_requests_get_clear_4xx(judge_server, body, status, param):
    code, payload = raw_request(judge_server, "POST", "/v1/chat/completions", body)
    assert code == status and payload["error"]["param"] == param and payload["error"]["message"]


def test_size_cap_routes_and_missing_length(judge_server):
    big = json.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * 30_000}]}).encode()
    code, payload = raw_request(judge_server, "POST", "/v1/chat/completions", big)
    assert code == 413 and "limit is 20000" in payload["error"]["message"]
    assert raw_request(judge_server, "POST", "/v1/completions", json.dumps(GOOD).encode())[0] == 404
    assert raw_request(judge_server, "GET", "/v1/nothing")[0] == 404
    status, health = raw_request(judge_server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["batching"]["generate_calls"] >= 1
    host, port = judge_server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:  # no Content-Length at all
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 411")
    # after all that, the server still answers
    assert raw_request(judge_server, "POST", "/v1/chat/completions", json.dumps(GOOD).encode())[0] == 200


def test_bearer_token_required_when_configured(judge_server, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "local-secret")
    body = json.dumps(GOOD).encode()
    assert raw_request(judge_server, "POST", "/v1/chat/completions", body)[0] == 401
    client = openai.OpenAI(base_url=judge_server.base_url, api_key="local-secret", max_retries=0)
    assert client.chat.completions.create(**GOOD).usage.completion_tokens >= 1


@pytest.mark.parametrize("mode", ["joint", "per_capability"])
def test_labeling_offline_through_the_judge_server(judge_server, tmp_path, mode):
    data = make_labeling_data(tmp_path, records=2)
    too_long = {"src": ["word " * 1100], "tgt": [], "response": ["a", "b"], "rank": [1, 2], "label": "闲聊"}
    with open(data.data, "a", encoding="utf-8") as handle:  # one pair longer than the judge's context
        handle.write(json.dumps(too_long, ensure_ascii=False) + "\n")
    config = judge_config(data, tmp_path / "out", judge_server, mode, concurrency=2)
    summary = run_labeling(config).summary
    assert summary["complete"] and summary["failed_requests"] == 0 and summary["retries"] == 0
    assert summary["aborted"] is None
    refused_probe = 1 if mode == "joint" else 0  # the server refuses JSON mode once; the labeler falls back
    too_long_requests = 2 if mode == "joint" else 2 * 2  # both orders (x 2 chitchat capabilities)
    assert summary["requests"] == data.requests[mode] + too_long_requests
    assert summary["calls"] == summary["requests"] + refused_probe
    assert summary["errors_by_kind"] == {"context_length_exceeded": too_long_requests}
    assert summary["json_response_format"] is (False if mode == "joint" else None)
    outcomes = [t for caps in summary["per_capability"].values() for t in caps.values()]
    # a random tiny model mostly answers nonsense: every pair is still accounted for, undecided ones counted
    for tally in outcomes:
        assert tally["labeled"] + tally["inconsistent"] + tally["undecided"] + tally["too_long"] == tally["pairs"]
    assert sum(t["pairs"] for t in outcomes) == 3 * 3 + 4 * 2  # 3 pairs x 3 capabilities + 4 pairs x 2
    assert summary["per_capability"]["chitchat"]["empathy"]["too_long"] == 1
    assert summary["tokens_in"] > 0 and summary["estimated_cost_usd"] == 0.0


@pytest.mark.slow
def test_serve_judge_command_binds_loopback_and_serves(tiny_llama_path):
    command = [
        sys.executable,
        "-m",
        "dmoerm_trl.cli",
        "serve-judge",
        "--model",
        tiny_llama_path,
        "--port",
        "0",
        "--served-model-name",
        "cli-judge",
    ]
    # stderr goes to a file, not a pipe nobody reads (a full pipe would block the server); the exit deadline is
    # generous because a loaded CI machine can take tens of seconds to tear torch down.
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        try:
            line = process.stdout.readline()
            if not line.startswith("Serving 'cli-judge' at http://127.0.0.1:"):
                process.wait(timeout=60)
                stderr.seek(0)
                pytest.fail(f"serve-judge did not start: {line!r}\n{stderr.read()[-3000:]}")
            base_url = line.split(" at ")[1].split()[0]
            with urllib.request.urlopen(base_url + "/models", timeout=30) as response:
                assert json.load(response)["data"][0]["id"] == "cli-judge"
        finally:
            # SIGTERM (what process managers send; SIGINT may be ignored in a background job) stops it cleanly
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 120
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0


def test_serve_judge_on_a_port_in_use_is_one_line(judge_server, judge_model_path, capsys):
    # Was a traceback (server_close of a half-built server) hiding "Address already in use", exit code 1.
    from dmoerm_trl.cli import main

    port = str(judge_server.server_address[1])
    assert main(["serve-judge", "--model", judge_model_path, "--port", port]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert f"dmoerm serve-judge: error: --port {port}: 127.0.0.1:{port} is already in use" in stderr
    with urllib.request.urlopen(judge_server.base_url + "/models", timeout=30) as response:  # the first one serves on
        assert response.status == 200


def test_a_reward_model_is_refused_as_judge(judge_model_path, tmp_path):
    # AutoModelForCausalLM loads a sequence-classification checkpoint with a random lm_head: every answer was noise
    # (dmoerm serve-judge then served it; now it exits 2 with this line).
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dmoerm_trl.labeling.judge_model import JudgeModel

    reward_model = AutoModelForSequenceClassification.from_pretrained(judge_model_path, num_labels=1)
    reward_model.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(judge_model_path).save_pretrained(tmp_path / "rm")
    with pytest.raises(ValueError) as error:
        JudgeModel(tmp_path / "rm")
    message = str(error.value)
    assert "is not a causal language model (LlamaForSequenceClassification)" in message
    assert "lm_head.weight" in message and "\n" not in message
    assert JudgeModel(judge_model_path).model.config.architectures == ["LlamaForCausalLM"]  # a real one loads


def test_a_dmoerm_folder_is_refused_as_judge_in_one_short_line(judge_model_path, tiny_tokenizer, tmp_path):
    # transformers' own error listed every causal-LM config class: one line of about 4,000 characters.
    from dmoerm_trl import DMoERMForSequenceClassification
    from dmoerm_trl.labeling.judge_model import JudgeModel

    model = DMoERMForSequenceClassification.from_backbone(
        judge_model_path, {"chitchat": ["empathy"]}, tokenizer=tiny_tokenizer
    )
    model.save_pretrained(tmp_path / "dmoerm")
    tiny_tokenizer.save_pretrained(tmp_path / "dmoerm")
    with pytest.raises(ValueError) as error:
        JudgeModel(tmp_path / "dmoerm")
    message = str(error.value)
    assert "is not a causal language model (model_type 'dmoerm'" in message and len(message) < 300
