"""`dmoerm label` against `dmoerm serve-judge` on a local model: timeouts, calls and wall time, side by side.

Each run starts the real `dmoerm serve-judge` command on the model, runs the real `dmoerm label` command with a fresh
cache on the first --records records of the data, reads summary.json and the server's /health counters, and stops
the server (SIGTERM). Runs:

    sequential  the labeler with --concurrency 1: one request at a time, each generated alone; the server's
                per-batch times are then the single-request latencies (the reference). With
                --sequential-sample K only the first K requests are sent (--budget-calls) and the sum over all
                requests is estimated as N x their mean (± N x its standard error)
    defaults    the labeler's defaults against the server's defaults (batching)
    unbatched   the labeler's defaults against a server generating one request at a time (--max-batch-size 1),
                as serve-judge did before batching

Example (the measurement in docs/benchmarks.md; SmolLM2-135M-Instruct from the offline wheel):
    python benchmarks/judge_serving.py --records 6 --mode joint --runs sequential,defaults,unbatched
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "sequential": {"server": [], "label": ["--concurrency", "1"]},
    "defaults": {"server": [], "label": []},
    "unbatched": {"server": ["--max-batch-size", "1"], "label": []},
}


def start_server(model: str, name: str, extra: list[str], log) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "dmoerm_trl.cli", "serve-judge", "--model", model, "--port", "0"]
    command += ["--served-model-name", name, *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    line = process.stdout.readline()
    if not line.startswith("Serving "):
        process.kill()
        raise SystemExit(f"serve-judge did not start: {line!r} (see {log.name})")
    return process, line.split(" at ")[1].split()[0]


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()


def run_one(args, run: str, data: str, work: Path) -> dict:
    options = dict(RUNS[run])
    if run == "sequential" and args.sequential_sample:
        options["label"] = [*options["label"], "--budget-calls", str(args.sequential_sample)]
    with open(work / f"{run}-server.log", "w") as log:
        server_flags = options["server"] + args.server_args.split()
        server, base_url = start_server(args.model, args.served_name, server_flags, log)
        try:
            output = work / run
            command = [sys.executable, "-m", "dmoerm_trl.cli", "label", "--data", data, "--base-url", base_url]
            command += ["--model", args.served_name, "--mode", args.mode, "--output", str(output), "--no-progress"]
            command += options["label"] + (["--categories", args.categories] if args.categories else [])
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            (work / f"{run}-label.log").write_text(result.stdout + result.stderr)
            with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=30) as response:
                health = json.load(response)["batching"]
        finally:
            stop_server(server)
    summary = json.loads((output / "summary.json").read_text())
    return {
        "run": run,
        "exit_code": result.returncode,
        "requests": summary["requests"],
        "calls": summary["calls"],
        "retries": summary["retries"],
        "slow_answers": summary["slow_answers"],
        "timeouts": summary["errors_by_kind"].get("timeout", 0),
        "failed": summary["failed_requests"],
        "labels": summary["labels"],
        "labeling_seconds": summary["elapsed_seconds"],
        "command_seconds": round(wall, 1),
        "generate_calls": health["generate_calls"],
        "mean_batch_size": round(health["mean_batch_size"], 2),
        "disconnects": health["disconnects"],
        "lowest_concurrency": summary["concurrency"]["lowest"],
        "why_few_labels": summary["why_few_labels"],
        "batch_seconds": [batch["seconds"] for batch in health["recent_batches"]],
        "stdout": result.stdout,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Causal LM folder (default: the offline SmolLM2-135M-Instruct).")
    parser.add_argument("--served-name", default="judge")
    parser.add_argument("--data", default=str(REPO / "tests" / "fixtures" / "mtmc_tiny.jsonl"))
    parser.add_argument("--records", type=int, default=6, help="The first N records of --data.")
    parser.add_argument(
        "--shortest", action="store_true", help="The N shortest records with a category instead of the first N."
    )
    parser.add_argument(
        "--server-args", default="", help="Extra serve-judge flags for every run, e.g. '--dtype bfloat16'."
    )
    parser.add_argument("--mode", default="joint", choices=("joint", "per_capability"))
    parser.add_argument("--categories", default=None, help="Category set for `dmoerm label` (default: paper).")
    parser.add_argument("--runs", default="sequential,defaults", help=f"Comma-separated, of {', '.join(RUNS)}.")
    parser.add_argument(
        "--sequential-sample", type=int, default=0, help="Send only this many requests in the sequential run."
    )
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    if args.model is None:
        from dmoerm_trl.assets import prepare_smollm2

        args.model = str(prepare_smollm2())
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = set(runs) - set(RUNS)
    if unknown:
        parser.error(f"--runs: unknown {sorted(unknown)}; known: {', '.join(RUNS)}")
    work = Path(tempfile.mkdtemp(prefix="judge-serving-"))
    with open(args.data, encoding="utf-8") as handle:
        records = [line for line in handle if line.strip()]
    if args.shortest:
        records = sorted((r for r in records if json.loads(r).get("label")), key=len)
    records = records[: args.records]
    data = work / "records.jsonl"
    data.write_text("".join(records), encoding="utf-8")
    results = [run_one(args, run, str(data), work) for run in runs]
    reference = next((r for r in results if r["run"] == "sequential"), None)
    load = os.getloadavg()[0]
    print(
        f"\nmodel {Path(args.model).name} {args.server_args}; {len(records)} records; mode {args.mode}; "
        f"load average {load:.1f}"
    )
    print(
        "| run | requests | calls | retries | timeouts | waited past --timeout | failed | labels | labeling s "
        "| generate calls | mean batch | lowest concurrency | wall / sum of single latencies |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    single_sum = None
    if reference and reference["batch_seconds"]:
        latencies = reference["batch_seconds"]
        mean = sum(latencies) / len(latencies)
        se = (sum((t - mean) ** 2 for t in latencies) / max(1, len(latencies) - 1) / len(latencies)) ** 0.5
        n = reference["requests"]
        single_sum = n * mean if len(latencies) < n else sum(latencies)
        how = f"estimated from {len(latencies)} of {n}: {n} x {mean:.1f} s (± {n * se:.0f} s)"
        if len(latencies) >= n:
            how = f"measured over all {n}: mean {mean:.1f} s ± {se:.1f} s"
        print(f"sum of single-request latencies: {single_sum:.0f} s ({how})")
    for r in results:
        ratio = f"{r['labeling_seconds'] / single_sum:.2f}x" if single_sum else "-"
        print(
            f"| {r['run']} | {r['requests']} | {r['calls']} | {r['retries']} | {r['timeouts']} "
            f"| {r['slow_answers']} | {r['failed']} "
            f"| {r['labels']} | {r['labeling_seconds']:.1f} | {r['generate_calls']} | {r['mean_batch_size']} "
            f"| {r['lowest_concurrency']} | {ratio} |"
        )
    print(f"\n`dmoerm label` output of the last run:\n{results[-1]['stdout']}")
    print(f"logs in {work}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
