"""A real `dmoerm label` process killed with SIGKILL mid-run resumes without losing or duplicating a label."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from labeling_helpers import fast_config, read_jsonl

from dmoerm_trl.labeling import run_labeling
from dmoerm_trl.labeling.scripted_judge_server import ScriptedJudgeServer, VerdictJudge


def cached_answers(path) -> int:
    with sqlite3.connect(str(path)) as db:
        return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(labeling_data, tmp_path):
    total = labeling_data.requests["per_capability"]
    concurrency = 4
    with ScriptedJudgeServer(VerdictJudge(labeling_data.scores), latency=0.02) as server:
        reference = run_labeling(fast_config(labeling_data, tmp_path / "reference", server))
        assert server.counts["answered"] == total
        out = tmp_path / "out"
        command = [
            sys.executable,
            "-m",
            "dmoerm_trl.cli",
            "label",
            "--data",
            labeling_data.data,
            "--output",
            str(out),
            "--model",
            "scripted-judge",
            "--base-url",
            server.base_url,
            "--categories",
            labeling_data.categories,
            "--concurrency",
            str(concurrency),
            "--timeout",
            "5",
            "--no-progress",
        ]
        env = {**os.environ, "OPENAI_API_KEY": "unused"}
        cached_before_final = 0
        for kills, kill_after in enumerate((40, 120), start=1):  # answers served (cumulative) before the SIGKILL
            target = total + kill_after  # the reference run already took `total` answers
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 120
            while server.counts["answered"] < target:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "the labeler made no progress"
                time.sleep(0.001)
            answered_before_kill = server.counts["answered"] - total
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            assert process.returncode == -signal.SIGKILL
            cached = cached_answers(out / "cache.sqlite")
            # every answer sent before a kill is durable, except the few (<= concurrency) in flight at each kill
            assert answered_before_kill - kills * concurrency <= cached <= server.counts["answered"] - total
            assert not (out / "capability_pairs.jsonl").exists()  # outputs appear only when a run ends
            cached_before_final = cached
        final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert final.returncode == 0, final.stderr
        answered_total = server.counts["answered"] - total
    labels = read_jsonl(out / "capability_pairs.jsonl")
    # nothing lost: exactly the uninterrupted run's labels, in the same order, byte for byte
    assert (out / "capability_pairs.jsonl").read_bytes() == (
        tmp_path / "reference" / "capability_pairs.jsonl"
    ).read_bytes()
    # nothing duplicated: one row per (pair, capability), one cached answer per request
    keys = [(row["pair_id"], row["capability"]) for row in labels]
    assert len(keys) == len(set(keys)) == len(reference.labels)
    assert cached_answers(out / "cache.sqlite") == total
    # only requests in flight at a kill were asked twice
    assert total <= answered_total <= total + 2 * concurrency
    final_summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert final_summary["cache_hits"] == cached_before_final
    assert final_summary["calls"] == total - cached_before_final and final_summary["complete"]
