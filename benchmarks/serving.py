"""Serving throughput: ``dmoerm serve`` under concurrent single-conversation requests vs in-process batched scoring
of the same texts, side by side in one run.

1. Build (or take) a reward model and start ``dmoerm serve`` on 127.0.0.1 in a subprocess (same ``--threads``).
2. In process: score the texts with the server's own engine in batches of ``--max-batch-size`` (items/s), before and
   after the HTTP runs; the reference is the mean of the two (the machine may be shared: drift shows as their gap).
3. Over HTTP: for each client concurrency (default 1, 8, 32, 64) send every text once as its own ``/get_reward``
   request from that many concurrent clients (one asyncio ``httpx`` client, keep-alive); items/s, p50/p99 latency.
   Every served reward is checked against the in-process one.

The client runs on the same machine as the server (it costs CPU the server could use: a lower bound for a remote
trainer). The load average before and after is printed with the table.

    python benchmarks/serving.py                        # DMoERM on SmolLM2-135M-Instruct (2 categories x 2 experts)
    python benchmarks/serving.py --tiny                 # a tiny random DMoERM: HTTP overhead dominates (worst case)
    python benchmarks/serving.py --model ./my-dmoerm --requests 256 --concurrency 1,8,32,64

Flags: ``--model PATH`` (any saved DMoERM or sequence-classification RM), ``--tiny``, ``--requests`` (texts per
concurrency level, default 128), ``--concurrency`` (comma list), ``--max-batch-size`` (server and in-process batch,
default 32), ``--max-wait-ms`` (default 5), ``--threads`` (torch threads, server and in-process; default 1),
``--json PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY = re.compile(r"dmoerm serve: ready at (http://\S+)")
TOPICS = [
    "the capital of France",
    "why the sky is blue",
    "how to bake bread",
    "a poem about the sea",
    "12 times 7",
    "renting or buying a house",
    "a pirate's greeting",
    "the boiling point of water",
    "a story about a fox",
    "learning chess",
    "the moon landing",
    "a haiku about autumn",
    "how rainbows form",
    "saving money",
]
ANSWERS = [
    "Here is a short answer.",
    "I am not sure, but I think the answer is simple once you look closely.",
    "Let me explain step by step: first the basics, then the details, and finally a summary of it all.",
    "No.",
    "That is a great question! Many people wonder about it, and the answer has a long history.",
]


def conversations(n: int) -> list[list[dict]]:
    """``n`` deterministic one-turn chats of varied lengths."""
    chats = []
    for i in range(n):
        topic, answer = TOPICS[i % len(TOPICS)], ANSWERS[(i // len(TOPICS)) % len(ANSWERS)]
        chats.append(
            [
                {"role": "user", "content": f"Tell me about {topic}. (#{i})"},
                {"role": "assistant", "content": answer * (1 + i % 3)},
            ]
        )
    return chats


def build_model(folder: Path, tiny: bool) -> str:
    """A DMoERM saved in ``folder``: on SmolLM2-135M-Instruct (offline copy), or the tiny RL assets' one."""
    if tiny:
        from dmoerm_trl.rl.tiny_assets import make_tiny_rl_assets

        return make_tiny_rl_assets(folder, num_proxies=0, num_prompts=4)["dmoerm"]
    from transformers import AutoTokenizer

    from dmoerm_trl import DMoERMForSequenceClassification
    from dmoerm_trl.assets import prepare_smollm2
    from dmoerm_trl.testing_utils import randomize_adapters

    backbone = prepare_smollm2()
    categories = {"objective_qa": ["correctness", "logic"], "chitchat": ["empathy", "fluency"]}
    model = DMoERMForSequenceClassification.from_backbone(backbone, categories)
    randomize_adapters(model, std=0.02, seed=0)
    model.save_pretrained(folder / "dmoerm")
    AutoTokenizer.from_pretrained(backbone).save_pretrained(folder / "dmoerm")
    return str(folder / "dmoerm")


def start_server(model: str, args, log: Path) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "dmoerm_trl.cli",
        "serve",
        "--model",
        model,
        "--port",
        "0",
        "--threads",
        str(args.threads),
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-wait-ms",
        str(args.max_wait_ms),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        match = READY.search(log.read_text(errors="replace"))
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"dmoerm serve exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError("dmoerm serve did not become ready")


def in_process(engine, texts: list[str], batch_size: int) -> tuple[float, float, list[float]]:
    """Wall and CPU seconds to score ``texts`` in batches (tokenization included), and the rewards."""
    start, start_cpu = time.perf_counter(), time.process_time()
    rewards = []
    for i in range(0, len(texts), batch_size):
        items = engine.encode_texts(texts[i : i + batch_size])
        rewards += [r["reward"] for r in engine.score_items(items)]
    return time.perf_counter() - start, time.process_time() - start_cpu, rewards


async def http_run(url: str, texts: list[str], concurrency: int) -> tuple[float, list[float], list[float]]:
    """Every text as its own request from ``concurrency`` workers: (seconds, per-request latencies, rewards)."""
    import httpx

    rewards: list[float | None] = [None] * len(texts)
    latencies: list[float] = []
    next_index = iter(range(len(texts)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker():
            for i in next_index:
                sent = time.perf_counter()
                response = await client.post(url + "/get_reward", json={"query": [texts[i]]})
                latencies.append(time.perf_counter() - sent)
                response.raise_for_status()
                rewards[i] = response.json()["rewards"][0]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, rewards


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    import httpx
    import psutil
    import torch

    from dmoerm_trl.serving.engine import RewardEngine

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or build_model(Path(tmp), args.tiny)
        engine = RewardEngine.from_pretrained(model_path, device="cpu")
        texts = [engine.render(c, "bench") for c in conversations(args.requests)]
        lengths = [len(i) for i in engine.encode_texts(texts)]
        process, url = start_server(model_path, args, Path(tmp) / "server.log")
        try:
            server_process = psutil.Process(process.pid)
            in_process(engine, texts[: args.max_batch_size], args.max_batch_size)  # warm-up
            asyncio.run(http_run(url, texts[:8], 8))
            first, first_cpu, reference = in_process(engine, texts, args.max_batch_size)
            rows = []
            for concurrency in levels:
                before = httpx.get(url + "/metrics", timeout=60).json()["batcher"]
                cpu_before = sum(server_process.cpu_times()[:2])
                seconds, latencies, rewards = asyncio.run(http_run(url, texts, concurrency))
                server_cpu = sum(server_process.cpu_times()[:2]) - cpu_before
                after = httpx.get(url + "/metrics", timeout=60).json()["batcher"]
                worst = max(abs(a - b) for a, b in zip(rewards, reference))
                batches = after["batches"] - before["batches"]
                rows.append(
                    {
                        "concurrency": concurrency,
                        "seconds": seconds,
                        "items_per_s": len(texts) / seconds,
                        "p50_ms": 1000 * percentile(latencies, 0.5),
                        "p99_ms": 1000 * percentile(latencies, 0.99),
                        "max_abs_diff": worst,
                        "batches": batches,
                        "mean_batch": len(texts) / batches,
                        "server_cpu_ms_per_item": 1000 * server_cpu / len(texts),
                    }
                )
            second, second_cpu, _ = in_process(engine, texts, args.max_batch_size)
            server_metrics = httpx.get(url + "/metrics", timeout=60).json()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=300)
    load_after = os.getloadavg()
    in_process_rate = len(texts) / ((first + second) / 2)
    in_process_cpu = 1000 * (first_cpu + second_cpu) / 2 / len(texts)
    print(
        f"model: {'tiny DMoERM' if args.tiny else model_path if args.model else 'DMoERM on SmolLM2-135M (2x2)'}; "
        f"{len(texts)} texts, {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}); "
        f"--threads {args.threads}, --max-batch-size {args.max_batch_size}, --max-wait-ms {args.max_wait_ms}"
    )
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (2 cores)")
    print(
        f"in-process batched: {len(texts) / first:.1f} and {len(texts) / second:.1f} items/s "
        f"(before / after the HTTP runs); reference {in_process_rate:.1f} items/s, {in_process_cpu:.1f} CPU ms/item"
    )
    print(
        "| client concurrency | items/s | vs in-process | p50 ms | p99 ms | batches (mean size) "
        "| server CPU ms/item (vs in-process) | max abs reward diff |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        row["vs_in_process"] = row["items_per_s"] / in_process_rate
        print(
            f"| {row['concurrency']} | {row['items_per_s']:.1f} | {row['vs_in_process']:.2f}x | "
            f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['batches']} ({row['mean_batch']:.1f}) | "
            f"{row['server_cpu_ms_per_item']:.1f} ({row['server_cpu_ms_per_item'] / in_process_cpu:.2f}x) | "
            f"{row['max_abs_diff']:.1e} |"
        )
    print(f"server errors: {server_metrics['server']['server_errors']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "in_process_items_per_s": in_process_rate,
                    "in_process_cpu_ms_per_item": in_process_cpu,
                    "load": [load_before, load_after],
                    "server": server_metrics,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
