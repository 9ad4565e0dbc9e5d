"""The labeler against a real HTTP server on 127.0.0.1 that answers from known verdicts and injects faults."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from labeling_helpers import ZH_NAMES, expected_labels, fast_config, label_set, make_labeling_data, read_jsonl

from dmoerm_trl.labeling import run_labeling
from dmoerm_trl.labeling.scripted_judge_server import FAULT_KINDS, ScriptedJudgeServer, VerdictJudge

ALL_FAULTS = {kind: 0.07 for kind in FAULT_KINDS}  # ~50% of first attempts fail, in every way


def test_consistent_judge_labels_match_the_truth_and_filters_are_counted(labeling_data, tmp_path):
    judge = VerdictJudge(labeling_data.scores, position_biased={"depth"}, undecided={"fluency"})
    with ScriptedJudgeServer(judge) as server:
        per_capability = run_labeling(fast_config(labeling_data, tmp_path / "pc", server, mode="per_capability"))
        joint = run_labeling(fast_config(labeling_data, tmp_path / "joint", server, mode="joint"))
    expected = expected_labels(labeling_data, skip={"depth", "fluency"})
    for result, mode in ((per_capability, "per_capability"), (joint, "joint")):
        summary = result.summary
        assert label_set(result.labels) == expected, mode
        assert summary["requests"] == summary["calls"] == labeling_data.requests[mode]
        assert summary["complete"] and summary["cache_hits"] == 0 and summary["retries"] == 0
        stats = summary["per_capability"]
        n_qa, n_chat = labeling_data.pairs["objective_qa"], labeling_data.pairs["chitchat"]
        assert (
            stats["objective_qa"]["depth"] | {"inconsistent": n_qa, "labeled": 0, "consistency_rate": 0.0}
            == stats["objective_qa"]["depth"]
        )
        assert stats["chitchat"]["fluency"]["undecided"] == n_chat and stats["chitchat"]["fluency"]["labeled"] == 0
        assert stats["objective_qa"]["logic"]["consistency_rate"] == 1.0
        assert stats["objective_qa"]["logic"]["labeled"] == n_qa
        assert summary["tokens_in"] > 0 and summary["tokens_out"] > 0 and summary["elapsed_seconds"] > 0
    # the paper's mode costs 2k calls per pair, joint 2
    assert per_capability.summary["requests_per_pair"] > joint.summary["requests_per_pair"] == 2.0
    # the two modes agree on every label, and both outputs are loadable datasets
    assert label_set(read_jsonl(tmp_path / "pc" / "capability_pairs.jsonl")) == label_set(per_capability.labels)
    import datasets

    loaded = datasets.load_dataset(
        "json", data_files=str(tmp_path / "joint" / "capability_pairs.jsonl"), split="train"
    )
    assert set(loaded.column_names) == {"prompt", "chosen", "rejected", "category", "capability", "pair_id"}
    assert len(loaded) == len(expected)
    summary_file = json.loads((tmp_path / "joint" / "summary.json").read_text(encoding="utf-8"))
    assert summary_file["json_response_format"] is True and summary_file["data"]["records"] == 12


@pytest.mark.parametrize("mode", ["per_capability", "joint"])
def test_faults_give_the_same_labels_as_a_fault_free_run_and_a_rerun_makes_zero_calls(labeling_data, tmp_path, mode):
    judge = VerdictJudge(labeling_data.scores)
    with ScriptedJudgeServer(judge) as server:
        clean = run_labeling(fast_config(labeling_data, tmp_path / "clean", server, mode=mode))
    # "slow" answers come after 4.5 s: past the whole wait for a live server (20 x the 0.2 s timeout): they time out
    with ScriptedJudgeServer(judge, faults=ALL_FAULTS, slow_seconds=4.5) as server:
        faulty = run_labeling(fast_config(labeling_data, tmp_path / "faulty", server, mode=mode, timeout=0.2))
        assert set(server.counts) >= {"answered", *FAULT_KINDS} or mode == "joint"
        requests_before = server.counts["requests"]
        rerun = run_labeling(fast_config(labeling_data, tmp_path / "faulty", server, mode=mode))
        assert server.counts["requests"] == requests_before  # not a single HTTP request
    clean_file = (tmp_path / "clean" / "capability_pairs.jsonl").read_bytes()
    assert (tmp_path / "faulty" / "capability_pairs.jsonl").read_bytes() == clean_file
    assert label_set(clean.labels) == expected_labels(labeling_data)
    summary = faulty.summary
    assert summary["complete"] and summary["failed_requests"] == 0 and summary["retries"] > 0
    assert summary["calls"] == summary["requests"] + summary["retries"]
    if mode == "per_capability":  # enough requests to meet every kind of fault
        assert set(summary["errors_by_kind"]) == {
            "rate_limited",
            "http_500",
            "timeout",
            "connection_error",
            "bad_response",
        }
    assert rerun.summary["calls"] == 0 and rerun.summary["cache_hits"] == summary["requests"]
    assert (tmp_path / "faulty" / "capability_pairs.jsonl").read_bytes() == clean_file


def test_budget_stops_cleanly_keeps_everything_and_resumes(labeling_data, tmp_path):
    judge = VerdictJudge(labeling_data.scores)
    with ScriptedJudgeServer(judge) as server:
        reference = run_labeling(fast_config(labeling_data, tmp_path / "reference", server))
        partial = run_labeling(fast_config(labeling_data, tmp_path / "out", server, budget_calls=25, concurrency=4))
        summary = partial.summary
        assert summary["stopped_by_budget"] and not summary["complete"] and summary["calls"] == 25
        kept = label_set(partial.labels)
        assert kept and kept < label_set(reference.labels)
        not_run = sum(t["not_run"] for caps in summary["per_capability"].values() for t in caps.values())
        labeled = sum(t["labeled"] for caps in summary["per_capability"].values() for t in caps.values())
        assert labeled == len(kept) and not_run == len(reference.labels) - len(kept)
        assert label_set(read_jsonl(tmp_path / "out" / "capability_pairs.jsonl")) == kept  # written, not lost
        by_tokens = run_labeling(fast_config(labeling_data, tmp_path / "tokens", server, budget_tokens=2000))
        assert by_tokens.summary["stopped_by_budget"]
        assert by_tokens.summary["tokens_in"] + by_tokens.summary["tokens_out"] < 2000 + 8 * 200
        resumed = run_labeling(fast_config(labeling_data, tmp_path / "out", server))
    assert resumed.summary["complete"] and resumed.summary["cache_hits"] == 25
    assert resumed.summary["calls"] == labeling_data.requests["per_capability"] - 25
    assert label_set(resumed.labels) == label_set(reference.labels)


def test_retry_after_is_honoured(tmp_path):
    from openai import AsyncOpenAI

    from dmoerm_trl.labeling.cache import LabelCache
    from dmoerm_trl.labeling.judge_client import JudgeClient, parse_retry_after

    with ScriptedJudgeServer(lambda body: "2", retry_after_headers={"Retry-After": "1"}) as server:
        server.forced_faults = ["rate_limit"]

        async def ask():
            client = AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
            judge = JudgeClient(
                client, "scripted-judge", LabelCache(tmp_path / "cache.sqlite"), backoff_base=0.001, backoff_max=0.001
            )
            answer = await judge.ask([{"role": "user", "content": "?"}], max_tokens=4)
            await client.close()
            return answer, judge.stats

        answer, stats = asyncio.run(ask())
    assert answer == "2" and stats.retries == 1 and stats.errors_by_kind == {"rate_limited": 1}
    (first_time, first, _), (second_time, second, _) = server.log
    assert (first, second) == ("rate_limit", "answered")
    assert second_time - first_time >= 1.0  # the server's 1 s, not the client's 1 ms backoff
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert (
        9
        <= parse_retry_after(
            {"retry-after": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))}
        )
        <= 10
    )
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_a_client_with_its_own_retries_on_does_not_retry_under_the_judge_client(tmp_path):
    """Every attempt goes through our loop (counted, budgeted), even when the caller's client would retry itself."""
    from openai import AsyncOpenAI

    from dmoerm_trl.labeling.cache import LabelCache
    from dmoerm_trl.labeling.judge_client import JudgeClient

    with ScriptedJudgeServer(lambda body: "2") as server:
        server.forced_faults = ["server_error"]

        async def ask():
            client = AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=3)  # the client's default: 2
            judge = JudgeClient(client, "scripted-judge", LabelCache(tmp_path / "c.sqlite"), backoff_base=0.001)
            answer = await judge.ask([{"role": "user", "content": "?"}], max_tokens=4)
            await client.close()
            return answer, judge.stats, client.max_retries

        answer, stats, client_retries = asyncio.run(ask())
    assert [kind for _, kind, _ in server.log] == ["server_error", "answered"]
    assert answer == "2" and stats.calls == 2 and stats.retries == 1 and stats.errors_by_kind == {"http_500": 1}
    assert client_retries == 3  # the caller's client itself is left as it was


def test_requests_failing_every_retry_are_counted_and_asked_again(labeling_data, tmp_path):
    judge = VerdictJudge(labeling_data.scores)
    with ScriptedJudgeServer(judge) as server:
        server.forced_faults = ["server_error"] * 3
        first = run_labeling(fast_config(labeling_data, tmp_path / "out", server, max_retries=2, concurrency=1))
        assert first.summary["failed_requests"] == 1 and not first.summary["complete"]
        failed = sum(t["failed"] for caps in first.summary["per_capability"].values() for t in caps.values())
        assert failed == 1 and len(first.labels) == len(expected_labels(labeling_data)) - 1
        second = run_labeling(fast_config(labeling_data, tmp_path / "out", server))
    assert second.summary["complete"] and second.summary["calls"] == 1
    assert label_set(second.labels) == expected_labels(labeling_data)


def test_joint_mode_falls_back_when_json_mode_is_refused(labeling_data, tmp_path):
    judge = VerdictJudge(labeling_data.scores)
    with ScriptedJudgeServer(judge, reject_response_format=True) as server:
        first = run_labeling(fast_config(labeling_data, tmp_path / "out", server, mode="joint"))
        assert server.counts["rejected_response_format"] == 1  # asked once, remembered afterwards
        before = server.counts["requests"]
        rerun = run_labeling(fast_config(labeling_data, tmp_path / "out", server, mode="joint"))
        assert server.counts["requests"] == before
    assert first.summary["json_response_format"] is False and first.summary["complete"]
    assert label_set(first.labels) == expected_labels(labeling_data)
    assert rerun.summary["calls"] == 0


def test_chinese_paper_prompt_end_to_end(labeling_data, tmp_path):
    seen = []

    def judge(body):
        seen.append(body["messages"][-1]["content"])
        return VerdictJudge(labeling_data.scores, capability_names=ZH_NAMES, style="zh")(body)

    with ScriptedJudgeServer(judge) as server:
        result = run_labeling(fast_config(labeling_data, tmp_path / "zh", server, language="zh"))
    assert label_set(result.labels) == expected_labels(labeling_data)
    assert seen[0].startswith("给定提问和两个回复，判断回复1和回复2在【") and "】方面哪个更好。\n【提问】：" in seen[0]
    multi_turn = [text for text in seen if "用户：" in text]
    assert multi_turn and "助手：assistant turn 0" in multi_turn[0]  # the whole context, not only the last turn


def test_custom_template_file_is_used(labeling_data, tmp_path):
    template = tmp_path / "mine.yaml"
    template.write_text(
        "mode: per_capability\nsystem: Judge strictly.\nuser: |-\n  MY TEMPLATE\n  Capability: {capability}\n"
        "  [Conversation]\n  {conversation}\n  [End of Conversation]\n"
        "  [Response 1]\n  {response_1}\n  [End of Response 1]\n"
        "  [Response 2]\n  {response_2}\n  [End of Response 2]\n",
        encoding="utf-8",
    )
    seen = []

    def judge(body):
        seen.append(body["messages"])
        return VerdictJudge(labeling_data.scores)(body)

    with ScriptedJudgeServer(judge) as server:
        result = run_labeling(fast_config(labeling_data, tmp_path / "out", server, template=str(template)))
    assert seen[0][0] == {"role": "system", "content": "Judge strictly."}
    assert seen[0][1]["content"].startswith("MY TEMPLATE\nCapability: ")
    assert result.summary["template"]["source"] == str(template)
    assert label_set(result.labels) == expected_labels(labeling_data)


def test_concurrency_is_bounded_duplicates_share_calls_and_uncategorized_pairs_are_counted(labeling_data, tmp_path):
    rows = []
    for i in range(6):
        rows.append(
            {
                "prompt": f"q{i}",
                "chosen": f"candidate 0 for dialogue {2 * i}",
                "rejected": f"candidate 1 for dialogue {2 * i}",
                "category": "objective_qa",
            }
        )
        rows.append({"prompt": "Hi", "chosen": "candidate 0 for dialogue 1", "rejected": "candidate 1 for dialogue 1"})
    rows += [rows[0]] * 4  # the same pair 4 more times: its requests are asked once
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = type(labeling_data)(**{**vars(labeling_data), "data": str(data_file)})
    with ScriptedJudgeServer(VerdictJudge(labeling_data.scores), latency=0.05) as server:
        summary = run_labeling(fast_config(data, tmp_path / "out", server, concurrency=3)).summary
    assert server.max_in_flight == 3  # reached, never exceeded
    assert summary["pairs"] == 16 and summary["pairs_without_category"] == 6
    assert summary["requests"] == 10 * 3 * 2 and summary["calls"] == server.counts["requests"] == 6 * 3 * 2
    assert summary["cache_hits"] + summary["shared_answers"] == 4 * 3 * 2
    assert summary["labels"] == 10 * 3


def test_a_server_slower_than_the_timeout_is_waited_for_not_sent_a_second_copy(tmp_path):
    """Every answer takes 0.8 s, the timeout is 0.3 s: the server is up (GET /models answers), so no copy is resent."""
    data = make_labeling_data(tmp_path, records=2)  # 6 pairs, 12 joint requests
    with ScriptedJudgeServer(VerdictJudge(data.scores), latency=0.8) as server:
        summary = run_labeling(
            fast_config(data, tmp_path / "out", server, mode="joint", timeout=0.3, concurrency=8)
        ).summary
        assert server.counts["requests"] == 12  # one copy of each request reached the server
    assert summary["complete"] and summary["failed_requests"] == 0
    assert summary["retries"] == 0 and summary["errors_by_kind"] == {}
    assert summary["calls"] == summary["requests"] == 12 and summary["slow_answers"] == 12
    assert summary["concurrency"]["reductions"] == 0  # slow is not overloaded: the batch size stays


def test_a_request_to_a_server_that_went_down_is_abandoned_and_retried(tmp_path):
    """The server accepts the request and then stops answering anything (GET /models too): timeout, then retry."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held = []

    def accept_and_ignore():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            held.append(connection)  # never answered

    threading.Thread(target=accept_and_ignore, daemon=True).start()
    data = make_labeling_data(tmp_path, records=1)
    server = type("Down", (), {"base_url": f"http://127.0.0.1:{port}/v1"})()
    try:
        started = time.monotonic()
        summary = run_labeling(
            fast_config(data, tmp_path / "out", server, mode="joint", timeout=0.2, max_retries=1)
        ).summary
        elapsed = time.monotonic() - started
    finally:
        listener.close()
        for connection in held:
            connection.close()
    assert summary["failed_requests"] == summary["requests"] == 6 and summary["slow_answers"] == 0
    assert summary["errors_by_kind"] == {"timeout": 12}  # each request: the first copy and its one retry
    assert summary["concurrency"]["reductions"] >= 1
    assert elapsed < 60  # each copy: 0.2 s, then a 1 s liveness check that fails


def test_a_judge_that_cannot_be_reached_stops_the_run_at_once(tmp_path):
    """A wrong --base-url (nothing listens): one attempt and one GET /models, then the run stops naming the URL;
    before, every request was retried max_retries times with backoff (hours for a real data set)."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = make_labeling_data(tmp_path, records=2)
    server = type("Nobody", (), {"base_url": f"http://127.0.0.1:{port}/v1"})()
    started = time.monotonic()
    summary = run_labeling(fast_config(data, tmp_path / "out", server, mode="joint", concurrency=1)).summary
    assert time.monotonic() - started < 30
    assert f"cannot reach the judge at http://127.0.0.1:{port}/v1" in summary["aborted"]
    assert "dmoerm serve-judge" in summary["aborted"] and summary["retries"] == 0 and not summary["complete"]


def test_adaptive_concurrency_halves_once_per_window_and_grows_back():
    from dmoerm_trl.labeling.judge_client import AdaptiveConcurrency

    async def scenario():
        limit = AdaptiveConcurrency(8)
        first = [await limit.acquire() for _ in range(8)]
        assert limit.in_flight == 8
        waiter = asyncio.ensure_future(limit.acquire())  # over the limit: waits
        await asyncio.sleep(0.01)
        assert not waiter.done()
        for epoch in first[:3]:
            await limit.release(epoch, overload=True)  # three overloads of one window
        assert (limit.limit, limit.reductions) == (4.0, 1)
        await asyncio.sleep(0.01)
        assert not waiter.done()  # 5 in flight, limit 4: still waiting
        for epoch in first[3:]:
            await limit.release(epoch, answered=True)
        assert (await waiter) == 1 and limit.in_flight == 1  # the new window
        await limit.release(1, overload=True)
        assert limit.limit == 2.0 and limit.lowest == 2.0
        for _ in range(20):
            await limit.release(await limit.acquire(), answered=True)
        assert 2.0 < limit.limit <= 8.0  # grows back additively, never above the configured maximum
        for _ in range(200):
            await limit.release(await limit.acquire(), answered=True)
        assert limit.limit == 8.0

    asyncio.run(scenario())


def test_few_labels_are_explained_one_line_per_cause_with_an_example_and_what_to_try(labeling_data, tmp_path):
    judge = VerdictJudge(labeling_data.scores, position_biased={"depth"}, undecided={"fluency", "empathy"})
    with ScriptedJudgeServer(judge) as server:
        server.forced_faults = ["server_error"] * 3
        summary = run_labeling(
            fast_config(labeling_data, tmp_path / "out", server, mode="per_capability", max_retries=2, concurrency=1)
        ).summary
    lines = summary["why_few_labels"]
    assert [line.split(":")[0] for line in lines] == ["undecided", "inconsistent", "failed requests"]
    n_qa, n_chat = labeling_data.pairs["objective_qa"], labeling_data.pairs["chitchat"]
    judgements = 3 * n_qa + 2 * n_chat
    assert lines[0].startswith(f"undecided: {2 * n_chat} of {judgements} judgements")
    example = summary["undecided_example"]
    assert example["capabilities"][0] in ("fluency", "empathy") and example["answer"]
    assert repr(example["answer"]) in lines[0] and "a stronger judge" in lines[0]
    assert lines[1].startswith(f"inconsistent: {n_qa} of {judgements}") and "position bias" in lines[1]
    assert "1 request(s) failed after every retry" in lines[2] and "http_500 3" in lines[2]
    assert "rerun the same command" in lines[2]


def test_joint_mode_diagnosis_suggests_per_capability_and_the_datas_language(tmp_path):
    from dmoerm_trl.labeling.diagnosis import explain_label_losses, few_labels

    data = make_labeling_data(tmp_path, records=2)
    with open(data.data, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    for row in rows:  # Chinese conversations
        row["src"] = ["请比较这两个回答的质量。" for _ in row["src"]]
        row["response"] = [f"第{j}个回答。" for j in range(len(row["response"]))]
    with open(data.data, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with ScriptedJudgeServer(lambda body: "Both answers are fine.") as server:
        summary = run_labeling(fast_config(data, tmp_path / "out", server, mode="joint")).summary
    assert summary["labels"] == 0 and few_labels(summary)
    (line,) = summary["why_few_labels"]
    assert line.startswith("undecided: 15 of 15 judgements (100%)")
    assert "'Both answers are fine.'" in line
    assert "--mode per_capability" in line and "--language zh (the data is Chinese)" in line
    assert explain_label_losses({"per_capability": {"c": {"x": {"pairs": 3, "labeled": 3}}}}) == []
