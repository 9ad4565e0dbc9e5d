"""A generic dynamic batcher for asyncio servers: requests that arrive together run as one batch in a worker thread.

Model-agnostic: the batcher only sees opaque items and a synchronous ``process_batch(list[item]) -> list[result]``
(a reward model's batched forward, an LLM judge's batched generation, ...). The event loop never runs the model:
each batch is handed to one dedicated worker thread, so the server keeps accepting and parsing requests while a
forward runs, and the next batch fills up meanwhile.

Rules, in the order they apply:

- A batch holds at most ``max_batch_size`` items. Its first item is always the oldest queued item (so nothing
  starves); the batcher waits at most ``max_wait_ms`` after that item arrived for the batch to fill.
- With ``sort_key`` (e.g. token length), the rest of the batch is the run of queued items whose keys are nearest
  to the oldest item's key (looking at most ``4 * max_batch_size`` items deep), and the batch is handed to
  ``process_batch`` sorted by key: sequences of similar length share a batch, so padding stays low.
- The queue holds at most ``max_queue`` items; ``submit`` raises :class:`QueueFull` (a server answers 503) rather
  than queueing without bound. A request larger than ``max_queue`` can never fit and raises ``ValueError``.
- A request's items may be split over several batches; ``submit`` returns its results in the request's order.
- If the task awaiting ``submit`` is cancelled (the client went away), its items not yet taken into a batch are
  dropped and never processed (counted in ``dropped_cancelled``).
- An exception raised by ``process_batch`` reaches exactly the requests with items in that batch.

Example:
    >>> import asyncio
    >>> from dmoerm_trl.serving.batching import DynamicBatcher
    >>> async def main():
    ...     batcher = DynamicBatcher(lambda xs: [x * x for x in xs], max_batch_size=8, max_wait_ms=2)
    ...     await batcher.start()
    ...     results = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3]))
    ...     await batcher.stop()
    ...     return results, batcher.metrics()["items"]
    >>> asyncio.run(main())
    ([[1, 4], [9]], 3)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["DynamicBatcher", "QueueFull"]

_LATENCY_WINDOW = 10_000  # percentiles are over the most recent requests, so memory stays bounded
_LOOKAHEAD_FACTOR = 4  # how deep (in batches) padding-aware grouping looks into the queue


class QueueFull(Exception):
    """The batcher's queue has no room for the request now; retry later (HTTP 503)."""


class _Request:
    """One ``submit`` call: its future, its results slots, and how many of its items are still unanswered."""

    __slots__ = ("future", "remaining", "results", "started")

    def __init__(self, future: asyncio.Future, n_items: int):
        self.future = future
        self.results: list[Any] = [None] * n_items
        self.remaining = n_items
        self.started = time.perf_counter()


class _Entry:
    """One queued item: the request it belongs to, its position there, and when it arrived."""

    __slots__ = ("enqueued", "index", "item", "key", "request")

    def __init__(self, request: _Request, index: int, item: Any, key: Any):
        self.request = request
        self.index = index
        self.item = item
        self.key = key
        self.enqueued = time.perf_counter()


class DynamicBatcher:
    """Collect items from concurrent ``submit`` calls into batches for a synchronous ``process_batch``.

    Args:
        process_batch: ``callable(list[item]) -> list[result]`` (same length, same order); runs in one worker
            thread, one batch at a time.
        max_batch_size: most items per batch.
        max_wait_ms: how long the oldest queued item may wait for its batch to fill before the batch runs anyway.
        max_queue: most items waiting (not yet in a batch); beyond it ``submit`` raises :class:`QueueFull`.
        sort_key: optional ``callable(item) -> number`` (e.g. token length) for padding-aware grouping.
        name: used in log lines and the worker thread's name.

    Example:
        >>> import asyncio
        >>> async def main():
        ...     b = DynamicBatcher(lambda xs: [len(x) for x in xs], sort_key=len, name="lengths")
        ...     await b.start()
        ...     try:
        ...         return await b.submit(["a", "bbb"])
        ...     finally:
        ...         await b.stop()
        >>> asyncio.run(main())
        [1, 3]
    """

    def __init__(
        self,
        process_batch: Callable[[list], list],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        sort_key: Callable[[Any], Any] | None = None,
        name: str = "batcher",
    ):
        if not callable(process_batch):
            raise TypeError("process_batch must be a callable(list[item]) -> list[result]")
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if float(max_wait_ms) < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if int(max_queue) < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.process_batch = process_batch
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.sort_key = sort_key
        self.name = name
        self._queue: collections.deque[_Entry] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._state = "new"  # new -> running -> stopping -> stopped
        self._drain = True
        self._in_flight = 0
        # counters for metrics()
        self._requests = 0
        self._completed = 0
        self._items = 0
        self._batches = 0
        self._batched_items = 0
        self._errors = 0
        self._rejected = 0
        self._dropped_cancelled = 0
        self._latencies_ms: collections.deque[float] = collections.deque(maxlen=_LATENCY_WINDOW)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the collector task and the worker thread (call from the event loop that will ``submit``)."""
        if self._state != "new":
            raise RuntimeError(f"{self.name}: start() called twice")
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-worker")
        self._state = "running"
        self._task = asyncio.create_task(self._collect(), name=f"{self.name}-collector")

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting work; with ``drain`` finish every queued and in-flight item, else fail the queued ones.

        The batch already running in the worker thread always finishes (a thread cannot be interrupted).
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        self._drain = drain
        self._state = "stopping"
        if not drain:
            self._fail_queued(RuntimeError(f"{self.name} stopped before these items were processed"))
        self._wakeup.set()
        if self._task is not None:
            await asyncio.shield(self._task)
        self._executor.shutdown(wait=True)
        self._state = "stopped"

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._state == "running"

    # ------------------------------------------------------------------ submitting
    async def submit(self, items: list) -> list:
        """Queue ``items`` and wait for their results, in the same order.

        Raises:
            QueueFull: the queue cannot take ``len(items)`` more items now (retry later).
            ValueError: the request alone is larger than ``max_queue``.
            RuntimeError: the batcher is not running (not started, or stopping).
            Exception: whatever ``process_batch`` raised for a batch holding some of these items.
        """
        items = list(items)
        if self._state != "running":
            raise RuntimeError(f"{self.name} is not running (state: {self._state})")
        if not items:
            return []
        if len(items) > self.max_queue:
            raise ValueError(f"{len(items)} items in one request exceed the queue size ({self.max_queue})")
        if len(self._queue) + len(items) > self.max_queue:
            self._rejected += 1
            raise QueueFull(f"{self.name} queue is full ({len(self._queue)} of {self.max_queue} items waiting)")
        keys = [self.sort_key(item) for item in items] if self.sort_key is not None else [None] * len(items)
        request = _Request(asyncio.get_running_loop().create_future(), len(items))
        self._queue.extend(_Entry(request, i, item, key) for i, (item, key) in enumerate(zip(items, keys)))
        self._requests += 1
        self._items += len(items)
        self._wakeup.set()
        try:
            return await request.future
        except asyncio.CancelledError:
            self._drop(request)
            raise

    def _drop(self, request: _Request) -> None:
        """Remove a cancelled request's items that no batch has taken yet."""
        before = len(self._queue)
        self._queue = collections.deque(entry for entry in self._queue if entry.request is not request)
        self._dropped_cancelled += before - len(self._queue)

    def _fail_queued(self, error: BaseException) -> None:
        for entry in self._queue:
            if not entry.request.future.done():
                entry.request.future.set_exception(error)
        self._queue.clear()

    # ------------------------------------------------------------------ the collector
    async def _collect(self) -> None:
        while True:
            if not self._queue:
                if self._state != "running":
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._state == "running":
                await self._wait_for_fill()
            if not self._queue:  # everything waiting was cancelled meanwhile
                continue
            batch = self._take_batch()
            await self._run(batch)

    async def _wait_for_fill(self) -> None:
        """Wait until a full batch is queued, the oldest item's ``max_wait`` has passed, or the batcher stops."""
        while self._queue and len(self._queue) < self.max_batch_size and self._state == "running":
            remaining = self._queue[0].enqueued + self.max_wait_s - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[_Entry]:
        size = self.max_batch_size
        if len(self._queue) <= size:
            batch = list(self._queue)
            self._queue.clear()
        elif self.sort_key is None:
            batch = [self._queue.popleft() for _ in range(size)]
        else:
            batch = self._nearest_keys(size)
        if self.sort_key is not None:
            batch.sort(key=lambda entry: entry.key)
        return batch

    def _nearest_keys(self, size: int) -> list[_Entry]:
        """The oldest item plus the ``size - 1`` queued items (within the look-ahead) whose keys are nearest to it."""
        lookahead = min(len(self._queue), _LOOKAHEAD_FACTOR * size)
        candidates = [self._queue[i] for i in range(lookahead)]
        oldest = candidates[0]
        ranked = sorted(range(lookahead), key=lambda i: candidates[i].key)
        pos = ranked.index(0)
        best_start, best_spread = None, None
        for start in range(max(0, pos - size + 1), min(pos, lookahead - size) + 1):
            spread = candidates[ranked[start + size - 1]].key - candidates[ranked[start]].key
            if best_spread is None or spread < best_spread:
                best_start, best_spread = start, spread
        chosen = {id(candidates[i]) for i in ranked[best_start : best_start + size]}
        assert id(oldest) in chosen
        batch = [entry for entry in self._queue if id(entry) in chosen]
        self._queue = collections.deque(entry for entry in self._queue if id(entry) not in chosen)
        return batch

    async def _run(self, batch: list[_Entry]) -> None:
        loop = asyncio.get_running_loop()
        self._batches += 1
        self._batched_items += len(batch)
        self._in_flight = len(batch)
        try:
            results = await asyncio.shield(
                loop.run_in_executor(self._executor, self.process_batch, [entry.item for entry in batch])
            )
            results = list(results)
            if len(results) != len(batch):
                raise RuntimeError(
                    f"{self.name}: process_batch returned {len(results)} results for {len(batch)} items"
                )
        except Exception as error:  # noqa: BLE001 - reaches exactly the requests that had items in this batch
            self._errors += 1
            logger.warning(
                "%s: a batch of %d items failed: %s: %s", self.name, len(batch), type(error).__name__, error
            )
            for request in {id(entry.request): entry.request for entry in batch}.values():
                if not request.future.done():
                    request.future.set_exception(error)
            return
        finally:
            self._in_flight = 0
        now = time.perf_counter()
        for entry, result in zip(batch, results):
            request = entry.request
            request.results[entry.index] = result
            request.remaining -= 1
            if request.remaining == 0 and not request.future.done():
                request.future.set_result(request.results)
                self._completed += 1
                self._latencies_ms.append((now - request.started) * 1000.0)

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> dict:
        """Counters since start: requests, items, batches, mean batch size, queue depth, errors, latency (ms).

        ``latency_p50_ms``/``latency_p99_ms`` cover the last 10,000 completed requests (submit to result).
        """
        latencies = sorted(self._latencies_ms)

        def percentile(q: float) -> float | None:
            if not latencies:
                return None
            return latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))]

        return {
            "requests": self._requests,
            "completed": self._completed,
            "items": self._items,
            "batches": self._batches,
            "mean_batch_size": self._batched_items / self._batches if self._batches else 0.0,
            "queue_depth": len(self._queue),
            "in_flight": self._in_flight,
            "errors": self._errors,
            "rejected_queue_full": self._rejected,
            "dropped_cancelled": self._dropped_cancelled,
            "latency_p50_ms": percentile(0.50),
            "latency_p99_ms": percentile(0.99),
        }
