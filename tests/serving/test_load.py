"""Bounded loopback load test: >= 2,000 requests at concurrency 64 against a real ``dmoerm serve``, with malformed
requests mixed in; every answer checked against in-process scores (0 lost or wrong, 0 server errors), and the
server's resident memory growth reported."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import psutil
import pytest
from serving_helpers import chat_texts, metrics

from dmoerm_trl.rl.tiny_assets import tiny_prompts

NUM_REQUESTS = 2048
CONCURRENCY = 64
MALFORMED = [  # (body bytes, message fragment): what a confused client might send
    (b'{"query": ["unterminated', "malformed JSON"),
    (b'{"query": "not a list"}', "must be an array of strings"),
    (b'{"query": []}', "is empty"),
    (b'{"query": ["fine", 42]}', "query[1]: expected a string"),
    (b'{"prompts": ["no query"]}', "`query` is missing"),
    (b"[]", "must be a JSON object"),
    (b'{"query": ["' + b"long " * 300 + b'"]}', "more than this server accepts"),
    (b'{"query": ["a", "b"], "prompts": ["a"]}', "`prompts` has 1 items"),
]


@pytest.mark.slow
def test_load_2048_requests_at_concurrency_64_with_malformed_ones(servers, dmoerm_local, record_property):
    model, tokenizer = dmoerm_local
    server = servers["dmoerm"]
    url = server.url
    texts, _, conversations = chat_texts(tokenizer, tiny_prompts(8))  # 48 distinct conversations
    expected_text = [r["reward"] for r in model.compute_rewards(texts, tokenizer)]
    expected_conv = model.compute_rewards(conversations, tokenizer)
    rng = random.Random(0)
    plan = []  # (kind, payload, expectation)
    for i in range(NUM_REQUESTS):
        roll = rng.random()
        if roll < 0.10:
            body, fragment = MALFORMED[i % len(MALFORMED)]
            plan.append(("malformed", body, fragment))
        elif roll < 0.25:
            picks = rng.sample(range(len(conversations)), 2)
            plan.append(("rewards", {"conversations": [conversations[j] for j in picks]}, picks))
        else:
            picks = rng.sample(range(len(texts)), rng.choice((1, 1, 1, 3)))
            plan.append(("get_reward", {"query": [texts[j] for j in picks]}, picks))
    process = psutil.Process(server.pid)
    before = metrics(url)
    failures: list[str] = []
    statuses: dict[int, int] = {}

    async def check(client, kind, payload, expectation):
        if kind == "malformed":
            response = await client.post(
                url + "/get_reward", content=payload, headers={"Content-Type": "application/json"}
            )
            ok = response.status_code == 400 and expectation in response.json()["error"]["message"]
        elif kind == "rewards":
            response = await client.post(url + "/v1/rewards", json=payload)
            results = response.json()["results"] if response.status_code == 200 else []
            ok = len(results) == len(expectation) and all(
                abs(r["reward"] - expected_conv[j]["reward"]) < 1e-5 and r["category"] == expected_conv[j]["category"]
                for r, j in zip(results, expectation)
            )
        else:
            response = await client.post(url + "/get_reward", json=payload)
            rewards = response.json()["rewards"] if response.status_code == 200 else []
            ok = len(rewards) == len(expectation) and all(
                abs(r - expected_text[j]) < 1e-5 for r, j in zip(rewards, expectation)
            )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if not ok:
            failures.append(f"{kind} {payload!r:.120} -> {response.status_code} {response.text[:200]}")

    async def run(requests):
        queue: asyncio.Queue = asyncio.Queue()
        for item in requests:
            queue.put_nowait(item)
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:

            async def worker():
                while not queue.empty():
                    item = queue.get_nowait()
                    try:
                        await check(client, *item)
                    except Exception as err:  # noqa: BLE001 - a lost request (connection error, bad JSON answer, ...)
                        failures.append(f"{item[0]} lost: {type(err).__name__}: {err}")

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    asyncio.run(run(plan[:128]))  # warm-up (allocator, first batches), then measure memory
    rss_start = process.memory_info().rss
    started = time.perf_counter()
    asyncio.run(run(plan))
    elapsed = time.perf_counter() - started
    rss_end = process.memory_info().rss
    after = metrics(url)
    growth_mb = (rss_end - rss_start) / 2**20
    summary = (
        f"{len(plan)} requests (+128 warm-up) at concurrency {CONCURRENCY} in {elapsed:.1f} s "
        f"({len(plan) / elapsed:.0f} req/s, loaded machine); statuses {dict(sorted(statuses.items()))}; "
        f"server RSS {rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB ({growth_mb:+.1f} MiB); "
        f"batches {after['batcher']['batches'] - before['batcher']['batches']}, "
        f"mean batch size {after['batcher']['mean_batch_size']:.1f}"
    )
    print(summary)
    record_property("load_summary", summary)
    assert not failures, f"{len(failures)} lost or wrong answers, e.g. {failures[:3]}"
    assert sum(statuses.values()) == len(plan) + 128 and not any(code >= 500 for code in statuses)
    assert after["server"]["server_errors"] == before["server"]["server_errors"] == 0
    assert after["batcher"]["errors"] == 0 and after["batcher"]["queue_depth"] == 0
    assert growth_mb < 200, summary  # a leak per request would show here (2,048 requests)
