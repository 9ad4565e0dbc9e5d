"""Labeling benchmark: calls per pair in both modes, throughput against a 200 ms loopback judge, cached rerun time,
and the client CPU per request of the openai client's generic ``post`` (what the labeler sends with) against
``chat.completions.create``.

The judge is the scripted OpenAI-compatible server (real HTTP on 127.0.0.1) in a separate process, answering every
request after a fixed latency; the client is the real labeler (``openai.AsyncOpenAI``, retries, SQLite cache).
With a fixed latency L and C requests in flight, no client can exceed C / L requests per second: the table reports
the measured throughput as a fraction of that limit (goal: >= 0.8).

Run:
    python benchmarks/labeling.py                   # ~1 minute
    python benchmarks/labeling.py --seconds 2       # shorter runs per concurrency
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_ranked_data(path: Path, records: int, responses: int, categories: list[str]) -> None:
    from dmoerm_trl.data import PAPER_CATEGORY_NAMES_ZH

    with open(path, "w", encoding="utf-8") as handle:
        for i in range(records):
            category = categories[i % len(categories)]
            record = {
                "src": [f"question {i}: explain topic {i} in detail"],
                "tgt": [],
                "response": [f"answer {j} to question {i}, " + "with some content " * 20 for j in range(responses)],
                "rank": list(range(1, responses + 1)),
                "label": PAPER_CATEGORY_NAMES_ZH[category],
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dmoerm_trl.labeling.scripted_judge_server",
            "--latency",
            str(latency),
            "--answer",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"the scripted server did not start: {line!r}")
    return process, line.split()[1]


def label(data: Path, output: Path, base_url: str, mode: str, concurrency: int) -> dict:
    from dmoerm_trl.data import load_preference_pairs
    from dmoerm_trl.labeling import CapabilityLabeler, LabelingConfig

    config = LabelingConfig(
        data=str(data),
        output=str(output),
        model="scripted-judge",
        base_url=base_url,
        mode=mode,
        concurrency=concurrency,
        progress=False,
        timeout=30,
    )
    pairs = load_preference_pairs(str(data), categories="paper")
    return CapabilityLabeler(config, api_key="unused").label(pairs).summary


async def client_cpu_ms(base_url: str, via: str, requests: int, concurrency: int) -> float:
    """Milliseconds of this process's CPU per request, sending ``requests`` chat completions ``via`` "post" or
    "create" (the server runs in another process, so only the client's work is counted)."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    body = {
        "model": "scripted-judge",
        "messages": [{"role": "user", "content": "1 or 2? " + "context " * 200}],
        "temperature": 0.0,
        "max_tokens": 4,
    }
    slots = asyncio.Semaphore(concurrency)

    async def one() -> str:
        async with slots:
            if via == "post":
                answer = await client.post("/chat/completions", cast_to=object, body=body)
                return answer["choices"][0]["message"]["content"]
            completion = await client.chat.completions.create(**body)
            return completion.choices[0].message.content

    started = time.process_time()
    answers = await asyncio.gather(*(one() for _ in range(requests)))
    cpu = time.process_time() - started
    await client.close()
    assert answers == ["1"] * requests
    return cpu * 1000 / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="Fixed server latency in seconds.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Ideal duration of each throughput run.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--cpu-requests",
        type=int,
        default=320,
        help="Requests per client-CPU run (post vs create, concurrency 32, 3 alternating runs each).",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from dmoerm_trl.data import PAPER_CATEGORIES

    work = Path(tempfile.mkdtemp(prefix="dmoerm-labeling-bench-"))
    server, base_url = start_server(args.latency)
    try:
        # 1. Calls per pair: one record per paper category, 4 candidates -> 6 pairs each.
        data = work / "paper.jsonl"
        write_ranked_data(data, records=len(PAPER_CATEGORIES), responses=4, categories=list(PAPER_CATEGORIES))
        print("## Requests per response pair (paper categories, 4 candidates per prompt -> 6 pairs each)\n")
        print("| mode | requests per pair | requests for 30 pairs |")
        print("|---|---|---|")
        for mode in ("per_capability", "joint"):
            summary = label(data, work / f"calls-{mode}", base_url, mode, concurrency=32)
            print(f"| {mode} | {summary['requests_per_pair']:.2f} | {summary['requests']} |")

        # 2. Throughput at fixed latency vs the limit concurrency / latency; 3. fully cached rerun.
        print(
            f"\n## Throughput against a loopback judge with {args.latency * 1000:.0f} ms latency "
            "(per_capability, objective_qa: 12 requests per pair)\n"
        )
        print(
            "| concurrency | requests | seconds | requests/s | limit C/L | fraction of limit | cached rerun s | "
            "cached requests/s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for concurrency in args.concurrency:
            limit = concurrency / args.latency
            requests = max(12, int(limit * args.seconds) // 12 * 12)
            data = work / f"throughput-{concurrency}.jsonl"
            write_ranked_data(data, records=requests // 12, responses=2, categories=["objective_qa"])
            output = work / f"throughput-{concurrency}"
            summary = label(data, output, base_url, "per_capability", concurrency)
            assert summary["calls"] == summary["requests"] == requests, summary
            rate = requests / summary["elapsed_seconds"]
            started = time.perf_counter()
            cached = label(data, output, base_url, "per_capability", concurrency)
            cached_seconds = time.perf_counter() - started
            assert cached["calls"] == 0 and cached["cache_hits"] == requests
            print(
                f"| {concurrency} | {requests} | {summary['elapsed_seconds']:.2f} | {rate:.1f} | {limit:.1f} | "
                f"{rate / limit:.3f} | {cached_seconds:.2f} | {requests / cached_seconds:.0f} |"
            )

        # 4. Client CPU per request: the generic post the labeler uses vs the typed create, alternating.
        runs = {"post": [], "create": []}
        for _ in range(3):
            for via, values in runs.items():
                values.append(asyncio.run(client_cpu_ms(base_url, via, args.cpu_requests, 32)))
        post, create = sorted(runs["post"])[1], sorted(runs["create"])[1]
        print(
            f"\n## Client CPU per request ({args.cpu_requests} requests at concurrency 32, median of 3 alternating "
            "runs)\n"
        )
        print("| via | ms CPU per request (runs) |")
        print("|---|---|")
        for via, median, values in (
            ("client.post(cast_to=object)", post, runs["post"]),
            ("chat.completions.create", create, runs["create"]),
        ):
            print(f"| {via} | {median:.2f} ({', '.join(f'{v:.2f}' for v in values)}) |")
        print(f"\npost / create = {post / create:.2f} ({1 - post / create:.0%} less client CPU per request)")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"\n(python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load} at the end; "
            "server in a separate process)"
        )
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
