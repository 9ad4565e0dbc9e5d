"""Labeling benchmark: calls per pair in both modes, throughput against a 200 ms loopback judge, cached rerun time.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="Fixed server latency in seconds.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Ideal duration of each throughput run.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
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
