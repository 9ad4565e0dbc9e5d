"""`serve-judge` under concurrent load: batched generation, back-pressure, disconnects, stalled or broken clients,
and the real labeler driving it (0 retries)."""

from __future__ import annotations

import json
import socket
import threading
import time

import openai
import pytest
from labeling_helpers import http_request, judge_config, make_labeling_data

from dmoerm_trl.labeling import LabelingConfig, run_labeling

STORY = [{"role": "user", "content": "Tell me a story about dogs and cats"}]


class Gate:
    """Wraps the server's real ``generate_batch``: records every batch and holds it until ``open()``."""

    def __init__(self, server):
        self.real = server.judge.generate_batch
        self.batches: list[list] = []  # the items of each call, as they arrived
        self.entered = threading.Event()
        self._open = threading.Event()
        server.judge.generate_batch = self

    def __call__(self, items):
        self.batches.append([(tuple(item.input_ids), item.cancelled.is_set()) for item in items])
        self.entered.set()
        assert self._open.wait(30), "the test never opened the gate"
        return self.real(items)

    def open(self):
        self._open.set()


def post(server, body: dict):
    return http_request(server, "POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "x"})


def in_thread(function, *args):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", function(*args)), daemon=True)
    thread.start()
    return thread, box


def read_until_closed(sock) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def wait_until(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_requests_arriving_together_share_one_generate_call_with_the_same_answers(start_judge):
    prompts = ["Which is better, 1 or 2?", "hi", "word " * 40, "Tell me a story about dogs and cats", "x", "1 or 2"]
    server = start_judge(max_batch_size=8, max_wait_ms=300)
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)

    def ask(prompt, max_tokens):
        messages = [{"role": "user", "content": prompt}]
        answer = client.chat.completions.create(
            model="tiny-judge", messages=messages, temperature=0, max_tokens=max_tokens
        )
        return answer.choices[0].message.content, answer.usage.completion_tokens, answer.choices[0].finish_reason

    alone = [ask(p, 4 + 3 * i) for i, p in enumerate(prompts)]  # one at a time: batches of 1
    assert server.metrics()["max_batch_size_seen"] == 1
    threads = [in_thread(ask, p, 4 + 3 * i) for i, p in enumerate(prompts)]
    for thread, _ in threads:
        thread.join(60)
    together = [box["result"] for _, box in threads]
    metrics = server.metrics()
    assert together == alone  # left padding and per-row max_tokens change nothing in the answers
    assert metrics["generate_calls"] < 2 * len(prompts) and metrics["max_batch_size_seen"] > 1
    assert metrics["completed"] == 2 * len(prompts) and metrics["errors"] == 0


def test_a_full_queue_answers_503_with_retry_after_and_the_queued_requests_still_get_answers(start_judge):
    server = start_judge(max_batch_size=1, max_wait_ms=0, max_queue=1)
    gate = Gate(server)
    body = {"model": "tiny-judge", "messages": STORY, "max_tokens": 3, "temperature": 0}
    try:
        first = in_thread(post, server, body)
        assert gate.entered.wait(20)  # the first request is being generated (held by the gate)
        second = in_thread(post, server, body)
        wait_until(lambda: server.metrics()["queue_depth"] == 1)  # the second waits in the queue: it is full
        status, headers, payload = post(server, body)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert "queue is full" in payload["error"]["message"] and payload["error"]["type"] == "server_error"
        gate.open()
        for thread, box in (first, second):
            thread.join(30)
            assert box["result"][0] == 200
        assert server.metrics()["rejected_queue_full"] == 1
    finally:
        gate.open()  # before the server stops: a held batch would hold up the stop


def test_a_client_that_disconnects_while_queued_is_never_generated(start_judge):
    server = start_judge(max_batch_size=1, max_wait_ms=0)
    gate = Gate(server)
    try:
        first = in_thread(post, server, {"model": "tiny-judge", "messages": STORY, "max_tokens": 3})
        assert gate.entered.wait(20)
        leaving = {"model": "tiny-judge", "messages": [{"role": "user", "content": "I will not wait"}]}
        leaving["max_tokens"] = 3
        data = json.dumps(leaving).encode()
        host, port = server.server_address[:2]
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
            )
            wait_until(lambda: server.metrics()["queue_depth"] == 1)
        wait_until(lambda: server.metrics()["disconnects"] == 1)  # noticed while it was still queued
        gate.open()
        first[0].join(30)
        assert first[1]["result"][0] == 200
        assert post(server, {"model": "tiny-judge", "messages": STORY, "max_tokens": 2})[0] == 200
        metrics = server.metrics()
    finally:
        gate.open()
    leaving_ids = server.judge.prepare(leaving["messages"], max_tokens=3).input_ids
    assert all(ids != tuple(leaving_ids) for batch in gate.batches for ids, _ in batch)  # never reached the model
    assert metrics["dropped_cancelled"] == 1 and metrics["generate_calls"] == 2


def test_a_client_that_disconnects_during_generation_stops_its_row(start_judge):
    server = start_judge(max_batch_size=1)
    steps, reached = [], threading.Event()

    def on_forward(module, args, output):  # one call per generated token
        steps.append(1)
        if len(steps) == 3:
            reached.set()
            wait_until(lambda: server.disconnects == 1)  # the client leaves mid-generation

    hook = server.judge.model.register_forward_hook(on_forward)
    try:
        data = json.dumps({"model": "tiny-judge", "messages": STORY, "max_tokens": 24, "temperature": 0}).encode()
        host, port = server.server_address[:2]
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
            )
            assert reached.wait(20)
        wait_until(lambda: server.metrics()["generate_calls"] == 1)
        metrics = server.metrics()
    finally:
        hook.remove()
    assert metrics["cancelled_in_batch"] == 1
    assert len(steps) <= 4  # stopped at the next token, not after 24 (this prompt runs to max_tokens alone)


def test_negative_or_broken_content_length_gets_400_and_a_stalled_client_times_out(start_judge):
    server = start_judge(read_timeout=0.5)
    host, port = server.server_address[:2]
    for length in (b"-5", b"abc"):
        with socket.create_connection((host, port), timeout=10) as sock:
            head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + length
            sock.sendall(head + b"\r\n\r\n")
            reply = read_until_closed(sock)  # the server closes the connection after its answer
            assert reply.startswith(b"HTTP/1.1 400") and b"non-negative integer" in reply
    baseline = threading.active_count()
    with socket.create_connection((host, port), timeout=10) as body_staller:
        body_staller.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        with socket.create_connection((host, port), timeout=10) as header_staller:
            header_staller.sendall(b"POST /v1/chat/compl")  # not even a complete request line
            started = time.monotonic()
            assert read_until_closed(body_staller).startswith(b"HTTP/1.1 408")
            assert read_until_closed(header_staller) == b""  # closed without a reply
            assert time.monotonic() - started < 10
    wait_until(lambda: threading.active_count() <= baseline, 10)  # their threads are gone
    status, _, _ = post(server, {"model": "tiny-judge", "messages": STORY, "max_tokens": 2})
    assert status == 200  # the server still serves


@pytest.mark.parametrize("mode", ["joint", "per_capability"])
def test_the_real_labeler_with_its_defaults_gets_batches_and_makes_no_retries(start_judge, tmp_path, mode):
    data = make_labeling_data(tmp_path, records=4 if mode == "joint" else 2)  # 24 / 30 requests
    server = start_judge()  # the server's defaults too
    config = judge_config(data, tmp_path / "out", server, mode)
    summary = run_labeling(config).summary
    metrics = server.metrics()
    assert config.concurrency == 8 and config.timeout == LabelingConfig.timeout  # the labeler's defaults
    refused_probe = 1 if mode == "joint" else 0  # the server refuses JSON mode once; the labeler falls back
    assert summary["requests"] == data.requests[mode]
    assert summary["retries"] == 0 and summary["failed_requests"] == 0 and summary["errors_by_kind"] == {}
    assert summary["calls"] == summary["requests"] + refused_probe
    assert summary["concurrency"]["reductions"] == 0
    assert metrics["completed"] == summary["requests"]  # every generated answer was one the labeler used
    assert metrics["max_batch_size_seen"] > 1 and metrics["generate_calls"] < summary["requests"]
    assert metrics["disconnects"] == 0 and metrics["rejected_queue_full"] == 0


@pytest.mark.slow
def test_judge_serving_benchmark_runs_the_real_commands(judge_model_path, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    data = make_labeling_data(tmp_path, records=2)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "judge_serving.py"
    command = [sys.executable, str(script), "--model", judge_model_path, "--data", data.data, "--records", "2"]
    command += ["--categories", data.categories, "--runs", "sequential,defaults", "--json", str(tmp_path / "r.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| sequential | 12 | 13 | 0 | 0 |" in result.stdout  # 12 requests + the refused JSON-mode probe
    rows = {row["run"]: row for row in json.loads((tmp_path / "r.json").read_text())}
    assert rows["sequential"]["mean_batch_size"] == 1.0 and rows["defaults"]["mean_batch_size"] > 1
    assert rows["defaults"]["timeouts"] == 0 and rows["defaults"]["calls"] == rows["defaults"]["requests"] + 1
