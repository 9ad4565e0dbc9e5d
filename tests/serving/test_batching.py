"""DynamicBatcher: ordering, batching of concurrent submits, max_wait, queue limits, cancellation, errors, grouping."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from dmoerm_trl.serving.batching import DynamicBatcher, QueueFull


class Recorder:
    """A process_batch that squares numbers, records every batch it saw and can be held on a gate."""

    def __init__(self, gate: threading.Event | None = None, fail_on=None):
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.gate = gate
        self.fail_on = fail_on
        self.started = threading.Event()

    def __call__(self, items):
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "test gate never opened"
        if self.fail_on is not None and any(self.fail_on(x) for x in items):
            raise ValueError(f"bad item in {items}")
        return [x * x if isinstance(x, int) else len(x) for x in items]


@contextlib.asynccontextmanager
async def running(process_batch, **options):
    """A started ``DynamicBatcher(process_batch, **options)``, stopped (draining its queue) when the block ends, also
    when an assertion inside fails, so no worker thread outlives its test. A test may stop it itself first."""
    batcher = DynamicBatcher(process_batch, **options)
    await batcher.start()
    try:
        yield batcher
    finally:
        await batcher.stop()


async def _wait_thread_event(event: threading.Event, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not event.is_set():
        assert time.monotonic() < deadline, "worker never started"
        await asyncio.sleep(0.005)


def test_results_in_request_order_across_split_batches():
    async def main():
        rec = Recorder()
        async with running(rec, max_batch_size=3, max_wait_ms=1) as b:
            requests = [list(range(i, i + n)) for i, n in [(0, 1), (10, 7), (100, 3), (50, 0), (200, 5)]]
            results = await asyncio.gather(*(b.submit(r) for r in requests))
        return rec, requests, results, b.metrics()

    rec, requests, results, metrics = asyncio.run(main())
    assert results == [[x * x for x in r] for r in requests]
    assert all(len(batch) <= 3 for batch in rec.batches)
    assert sum(len(batch) for batch in rec.batches) == 16  # every item processed exactly once
    assert metrics["items"] == 16 and metrics["requests"] == 4 and metrics["completed"] == 4


def test_concurrent_submits_share_full_batches():
    async def main():
        rec = Recorder()
        async with running(rec, max_batch_size=8, max_wait_ms=5000) as b:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(b.submit([i]) for i in range(16)))
            elapsed = time.perf_counter() - t0
        return rec, results, elapsed, b.metrics()

    rec, results, elapsed, metrics = asyncio.run(main())
    assert results == [[i * i] for i in range(16)]
    assert [len(batch) for batch in rec.batches] == [8, 8]
    assert elapsed < 5.0  # full batches run at once, without waiting max_wait
    assert metrics["batches"] == 2 and metrics["mean_batch_size"] == 8.0


def test_max_wait_collects_late_arrivals_then_runs_a_partial_batch():
    async def main():
        rec = Recorder()
        async with running(rec, max_batch_size=3, max_wait_ms=400) as b:
            t0 = time.perf_counter()
            first = asyncio.create_task(b.submit([1]))
            await asyncio.sleep(0.05)
            second = asyncio.create_task(b.submit([2]))
            results = await asyncio.gather(first, second)
            elapsed = time.perf_counter() - t0
            # after the window, a new item starts a new batch
            third = await b.submit([3])
        return rec, results, third, elapsed

    rec, results, third, elapsed = asyncio.run(main())
    assert results == [[1], [4]] and third == [9]
    assert rec.batches == [[1, 2], [3]]  # the late arrival joined the first item's batch
    assert elapsed >= 0.39  # the partial batch waited for max_wait before running


def test_queue_full_raises_and_queue_recovers():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate)
        async with running(rec, max_batch_size=1, max_wait_ms=0, max_queue=4) as b:
            in_flight = asyncio.create_task(b.submit([0]))
            await _wait_thread_event(rec.started)  # item 0 is in the worker, the queue is empty
            queued = [asyncio.create_task(b.submit([i])) for i in (1, 2)]
            queued.append(asyncio.create_task(b.submit([3, 4])))
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFull):
                await b.submit([5])
            with pytest.raises(ValueError, match="exceed the queue size"):
                await b.submit(list(range(5)))
            depth = b.metrics()["queue_depth"]
            gate.set()
            results = await asyncio.gather(in_flight, *queued)
            after = await b.submit([6])  # room again
        return results, after, depth, b.metrics()

    results, after, depth, metrics = asyncio.run(main())
    assert results == [[0], [1], [4], [9, 16]] and after == [36]
    assert depth == 4 and metrics["rejected_queue_full"] == 1 and metrics["queue_depth"] == 0


def test_cancelled_request_items_are_dropped_before_processing():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate)
        async with running(rec, max_batch_size=2, max_wait_ms=0) as b:
            first = asyncio.create_task(b.submit([1, 2]))
            await _wait_thread_event(rec.started)
            doomed = asyncio.create_task(b.submit([7, 8, 9]))
            survivor = asyncio.create_task(b.submit([3]))
            await asyncio.sleep(0.01)
            doomed.cancel()
            await asyncio.sleep(0.01)
            gate.set()
            results = await asyncio.gather(first, survivor)
        return rec, results, doomed, b.metrics()

    rec, results, doomed, metrics = asyncio.run(main())
    assert doomed.cancelled()
    assert results == [[1, 4], [9]]
    seen = [x for batch in rec.batches for x in batch]
    assert not {7, 8, 9} & set(seen)
    assert metrics["dropped_cancelled"] == 3 and metrics["queue_depth"] == 0


def test_request_cancelled_while_in_flight_does_not_disturb_its_batch_mates():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate)
        async with running(rec, max_batch_size=4, max_wait_ms=0) as b:
            gone, stays = asyncio.create_task(b.submit([1, 2])), asyncio.create_task(b.submit([3]))
            await _wait_thread_event(rec.started)
            gone.cancel()
            await asyncio.sleep(0.01)
            gate.set()
            result = await stays
            again = await b.submit([4])
        return rec, result, again, b.metrics()

    rec, result, again, metrics = asyncio.run(main())
    assert result == [9] and again == [16]
    assert rec.batches[0] == [1, 2, 3]  # already taken: processed, result discarded
    assert metrics["dropped_cancelled"] == 0 and metrics["errors"] == 0


def test_exception_reaches_only_the_requests_in_the_failing_batch():
    async def main():
        rec = Recorder(fail_on=lambda x: x < 0)
        async with running(rec, max_batch_size=2, max_wait_ms=5000) as b:
            outcomes = await asyncio.gather(
                b.submit([1, 2]),
                b.submit([-1, 3]),
                b.submit([4, 5]),
                b.submit([6, 7, -2, 8]),
                return_exceptions=True,
            )
            after = await b.submit([9, 10])
        return rec, outcomes, after, b.metrics()

    _rec, outcomes, after, metrics = asyncio.run(main())
    assert outcomes[0] == [1, 4] and outcomes[2] == [16, 25]
    assert isinstance(outcomes[1], ValueError) and "-1" in str(outcomes[1])
    assert isinstance(outcomes[3], ValueError) and "-2" in str(outcomes[3])
    assert after == [81, 100]  # the batcher keeps working after a failing batch
    assert metrics["errors"] == 2


def test_wrong_result_count_is_an_error_for_that_batch():
    async def main():
        async with running(lambda xs: xs[:-1], max_batch_size=4, max_wait_ms=0) as b:
            with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
                await b.submit([1, 2])

    asyncio.run(main())


def test_padding_aware_grouping_puts_similar_lengths_together_and_keeps_order():
    async def main():
        rec = Recorder()
        texts = ["a" * n for n in (3, 100, 1, 99, 4, 97, 2, 98)]
        async with running(rec, max_batch_size=4, max_wait_ms=5000, sort_key=len) as b:
            results = await asyncio.gather(*(b.submit([t]) for t in texts))
        return rec, texts, results

    rec, texts, results = asyncio.run(main())
    assert results == [[len(t)] for t in texts]
    assert [[len(t) for t in batch] for batch in rec.batches] == [[1, 2, 3, 4], [97, 98, 99, 100]]


def test_grouping_always_includes_the_oldest_item():
    async def main():
        rec = Recorder()
        texts = ["a" * n for n in (50, 1, 2, 3, 4, 200)]
        async with running(rec, max_batch_size=2, max_wait_ms=5000, sort_key=len) as b:
            await asyncio.gather(*(b.submit([t]) for t in texts))
        return rec

    rec = asyncio.run(main())
    assert [len(t) for t in rec.batches[0]] == [4, 50]  # the oldest (50) with its nearest key, not the two shortest
    assert sum(len(batch) for batch in rec.batches) == 6


def test_forward_runs_off_the_event_loop():
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        def slow(items):
            time.sleep(0.5)
            return items

        async with running(slow, max_batch_size=4, max_wait_ms=0, name="slowpoke") as b:
            tick_task = asyncio.create_task(ticker())
            await b.submit([1])
            tick_task.cancel()
        return ticks

    assert asyncio.run(main()) >= 10  # the loop kept running while the batch slept in the worker thread


def test_worker_thread_is_named_and_single():
    async def main():
        rec = Recorder()
        async with running(rec, max_batch_size=1, max_wait_ms=0, name="judge") as b:
            await asyncio.gather(*(b.submit([i]) for i in range(5)))
        return rec

    rec = asyncio.run(main())
    assert len(rec.threads) == 1 and next(iter(rec.threads)).startswith("judge-worker")


def test_stop_drains_queued_work_then_refuses_new_work():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate)
        async with running(rec, max_batch_size=2, max_wait_ms=5000) as b:
            tasks = [asyncio.create_task(b.submit([i])) for i in range(5)]
            await _wait_thread_event(rec.started)
            stopper = asyncio.create_task(b.stop(drain=True))
            await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError, match="not running"):
                await b.submit([99])
            gate.set()
            await stopper
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [[i * i] for i in range(5)]


def test_stop_without_drain_fails_queued_items():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate)
        async with running(rec, max_batch_size=1, max_wait_ms=0) as b:
            first = asyncio.create_task(b.submit([1]))
            await _wait_thread_event(rec.started)
            queued = asyncio.create_task(b.submit([2]))
            await asyncio.sleep(0.01)
            stopper = asyncio.create_task(b.stop(drain=False))
            await asyncio.sleep(0.01)
            gate.set()
            await stopper
        return await asyncio.gather(first, queued, return_exceptions=True), rec

    (first, queued), rec = asyncio.run(main())
    assert first == [1]  # the in-flight batch finished
    assert isinstance(queued, RuntimeError) and "stopped" in str(queued)
    assert rec.batches == [[1]]


def test_metrics_count_and_latency_percentiles():
    async def main():
        b = DynamicBatcher(lambda xs: xs, max_batch_size=4, max_wait_ms=1)
        before = b.metrics()
        await b.start()
        for _ in range(3):
            await asyncio.gather(*(b.submit([1, 2]) for _ in range(2)))
        await b.stop()
        return before, b.metrics()

    before, after = asyncio.run(main())
    assert before["latency_p50_ms"] is None and before["batches"] == 0
    assert after["requests"] == 6 and after["items"] == 12 and after["completed"] == 6
    assert after["batches"] == 3 and after["mean_batch_size"] == 4.0
    assert 0 < after["latency_p50_ms"] <= after["latency_p99_ms"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"max_queue": 0}, "max_queue"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(lambda xs: xs, **kwargs)


def test_submit_before_start_is_refused():
    async def main():
        with pytest.raises(RuntimeError, match="not running"):
            await DynamicBatcher(lambda xs: xs).submit([1])

    asyncio.run(main())


def test_module_doctests_run():
    import doctest

    from dmoerm_trl.serving import batching

    result = doctest.testmod(batching)
    assert result.attempted >= 2 and result.failed == 0
