"""One judge request, done reliably: cache lookup, bounded concurrency, retries with backoff, budget, accounting.

``JudgeClient.ask(messages)`` returns the judge's answer text (from the cache or from the endpoint) or ``None``
when the request failed after every retry (such requests are not cached, so the next run asks again).

- Retried: 408/409/429, 5xx, timeouts, dropped connections, bodies that are not a chat completion. The delay is
  the server's ``Retry-After`` (or ``retry-after-ms``) when it sends one, else ``backoff_base * 2**attempt`` capped
  at ``backoff_max``, with jitter (half fixed, half random) so that many clients do not retry in lockstep.
- A slow but healthy server is not turned into a retry storm. ``timeout`` is when the client checks on the
  server, not when it gives up: with no answer after ``timeout`` seconds it asks ``GET /models``; if the server
  answers, the request is most likely queued or being computed there, so the client keeps waiting instead of
  resending a second copy (counted as ``slow_answers``), up to ``MAX_WAIT_FACTOR * timeout`` in all. Only when
  the server does not answer, or that bound passes, is the request abandoned (a ``timeout``, retried); closing its
  connection stops the abandoned copy on ``dmoerm serve-judge`` and vLLM, which stop generating for clients that
  left. The number of requests in flight adapts (:class:`AdaptiveConcurrency`): halved on a timeout, 429 or 503,
  grown back by about one per window of answers, never above ``concurrency``.
- Too long for the judge's context (a 400 ``context_length_exceeded``): :class:`RequestTooLong`, counted; the
  run goes on.
- Not retried: other 4xx (bad key, unknown model, malformed request): :class:`JudgeError` stops the run. A 400
  about ``response_format`` in ``auto`` JSON mode switches JSON mode off for this model (remembered in the cache).
- Budget: once ``budget_calls`` requests were sent or ``budget_tokens`` tokens used, asking for an uncached answer
  raises :class:`BudgetExhausted`; cached answers are still served.
- The API key is only ever inside the ``openai`` client; error texts are redacted before they are kept or logged.

Why this loop and not the ``openai`` client's own retries (``max_retries``): the client retries inside one call,
so each retry would be invisible here: no per-attempt ``calls``/``retries``/``errors_by_kind`` counts, no budget
check before a resend, no halving of the requests in flight on each 429/503/timeout, the slot held while it
sleeps, and its ``timeout`` would resend a request the judge is still computing. Its policy also differs: fixed
0.5-8 s backoff (not ``--backoff-base``/``--backoff-max``), no retry at all for a ``Retry-After`` over 2 minutes
(ours waits up to 10), none for a malformed body. So the client is used with its retries off (enforced here with
``with_options(max_retries=0)``); docs/labeling.md "Retries: the openai client's and ours" has the comparison.

Example:
    >>> import asyncio, os, tempfile, openai
    >>> from dmoerm_trl.labeling.cache import LabelCache
    >>> from dmoerm_trl.labeling.judge_client import JudgeClient
    >>> from dmoerm_trl.labeling.scripted_judge_server import ScriptedJudgeServer
    >>> async def ask(base_url):
    ...     client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    ...     judge = JudgeClient(client, "scripted-judge", LabelCache(os.path.join(tempfile.mkdtemp(), "c.sqlite")))
    ...     first = await judge.ask([{"role": "user", "content": "1 or 2?"}], max_tokens=4)
    ...     second = await judge.ask([{"role": "user", "content": "1 or 2?"}], max_tokens=4)  # from the cache
    ...     return first, judge.stats.calls, judge.stats.cache_hits
    >>> with ScriptedJudgeServer(lambda body: "1") as server:
    ...     asyncio.run(ask(server.base_url))
    ('1', 1, 1)
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .._compat import openai_get_json, openai_post_json
from .cache import LabelCache, request_key

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}
OVERLOAD_STATUS = {429, 503}  # the server says "too much": fewer requests in flight
MAX_RETRY_AFTER_SECONDS = 600.0
MAX_WAIT_FACTOR = 20  # a request whose server is up is waited for up to 20 x timeout before it is abandoned


class JudgeError(RuntimeError):
    """A request the endpoint refuses for good (bad key, unknown model, malformed request): the run stops."""


class BudgetExhausted(Exception):
    """The call or token budget is used up; no new requests are sent."""


class RequestTooLong(Exception):
    """The endpoint says the prompt exceeds the judge's context: this request cannot be answered (others can)."""


def redact(text: str, secret: str | None = None) -> str:
    """Remove an API key (and anything shaped like an OpenAI key, even partly masked) from a message."""
    if secret:
        text = text.replace(secret, "***")
    return re.sub(r"\b(sk|key)-[A-Za-z0-9_\-*.]{4,}", r"\1-***", text)


@dataclass
class CallStats:
    """Counters of one labeling run (what the summary reports)."""

    calls: int = 0  # HTTP requests sent, retries included
    cache_hits: int = 0
    shared_answers: int = 0  # identical requests (duplicate pairs) served by one call already in flight
    retries: int = 0
    slow_answers: int = 0  # requests still unanswered after --timeout while the server was up: waited, not resent
    failed_requests: int = 0  # requests given up after max_retries (not cached: the next run asks again)
    tokens_in: int = 0
    tokens_out: int = 0
    calls_without_usage: int = 0
    retry_wait_seconds: float = 0.0
    errors_by_kind: Counter = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)

    def note_error(self, kind: str, message: str) -> None:
        self.errors_by_kind[kind] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{kind}: {message[:300]}")


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), or ``None``."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Retryable(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None, overload: bool = False):
        super().__init__(message)
        self.kind, self.retry_after, self.overload = kind, retry_after, overload


class AdaptiveConcurrency:
    """How many requests may be in flight: additive increase, multiplicative decrease (as TCP does).

    Starts at ``maximum``. An overload signal (a timeout, 429 or 503) halves the limit (not below 1), at most once per
    window: a request that started before the last decrease cannot decrease it again, so 8 requests timing out
    together halve it once, not 8 times. Each answer to a request of the current window adds ``1 / limit`` (about
    +1 per window of answers).

    Example:
        >>> import asyncio
        >>> async def demo():
        ...     limit = AdaptiveConcurrency(8)
        ...     epochs = [await limit.acquire() for _ in range(3)]
        ...     for epoch in epochs:
        ...         await limit.release(epoch, overload=True)  # 3 timeouts of one window: one halving
        ...     return limit.limit, limit.reductions
        >>> asyncio.run(demo())
        (4.0, 1)
    """

    def __init__(self, maximum: int):
        self.maximum = maximum
        self.limit = float(maximum)
        self.lowest = float(maximum)
        self.reductions = 0
        self.in_flight = 0
        self._epoch = 0
        self._changed = asyncio.Condition()

    async def acquire(self) -> int:
        """Wait for a free slot; returns the window (epoch) the request starts in."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1
            return self._epoch

    async def release(self, epoch: int, *, overload: bool = False, answered: bool = False) -> None:
        async with self._changed:
            self.in_flight -= 1
            if overload and epoch == self._epoch and self.limit > 1:
                self.limit = max(1.0, self.limit / 2)
                self.lowest = min(self.lowest, self.limit)
                self.reductions += 1
                self._epoch += 1
                logger.info("The judge is overloaded: at most %d request(s) in flight now.", int(self.limit))
            elif answered and epoch == self._epoch and self.limit < self.maximum:
                self.limit = min(float(self.maximum), self.limit + 1 / self.limit)
            self._changed.notify_all()


class JudgeClient:
    """Asks an OpenAI-compatible chat endpoint, through the cache, with retries and a budget."""

    def __init__(
        self,
        client,
        model: str,
        cache: LabelCache,
        *,
        template_sha256: str = "",
        temperature: float = 0.0,
        seed: int | None = None,
        response_format: str = "auto",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        budget_calls: int | None = None,
        budget_tokens: int | None = None,
        secret: str | None = None,
        stats: CallStats | None = None,
        rng: random.Random | None = None,
    ):
        # Our loop does every retry (see the module docstring): the client must not retry under it.
        self.client = client.with_options(max_retries=0) if hasattr(client, "with_options") else client
        self.model, self.cache = model, cache
        self.template_sha256 = template_sha256
        self.temperature, self.seed, self.response_format = temperature, seed, response_format
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.budget_calls, self.budget_tokens = budget_calls, budget_tokens
        self.stats = stats if stats is not None else CallStats()
        self._secret = secret
        self._rng = rng or random.Random()
        self.concurrency = AdaptiveConcurrency(concurrency)
        self._json_meta_key = f"json_mode_unsupported:{model}"
        self.budget_exhausted = False
        self._json_probe = asyncio.Lock()
        self._pending: dict[str, asyncio.Future] = {}
        self._json_confirmed = False
        self._ever_answered = False  # a judge that never answered and cannot be reached stops the run

    @classmethod
    def from_config(cls, client, config, cache: LabelCache, **overrides) -> JudgeClient:
        """A client with a :class:`~dmoerm_trl.labeling.LabelingConfig`'s model, sampling, concurrency, retry and
        budget settings (what every labeling step shares); ``overrides`` sets the rest (``template_sha256``,
        ``secret``, ``stats``, or a ``response_format`` other than the config's)."""
        settings = {
            "temperature": config.temperature,
            "seed": config.seed,
            "response_format": config.response_format,
            "concurrency": config.concurrency,
            "timeout": config.timeout,
            "max_retries": config.max_retries,
            "backoff_base": config.backoff_base,
            "backoff_max": config.backoff_max,
            "budget_calls": config.budget_calls,
            "budget_tokens": config.budget_tokens,
        }
        return cls(client, config.model, cache, **(settings | overrides))

    # -- JSON mode -------------------------------------------------------------------------------------------------
    def json_mode_active(self) -> bool:
        if self.response_format == "none":
            return False
        if self.response_format == "json_object":
            return True
        return self.cache.get_meta(self._json_meta_key) is None

    # -- public ----------------------------------------------------------------------------------------------------
    def key_for(self, messages: Sequence[Mapping], *, json_mode: bool, max_tokens: int) -> str:
        params = {
            "temperature": self.temperature,
            "max_tokens": max_tokens,
            "seed": self.seed,
            "response_format": "json_object" if json_mode else None,
        }
        return request_key(self.model, self.template_sha256, messages, params)

    async def ask(self, messages: Sequence[Mapping], *, max_tokens: int, want_json: bool = False) -> str | None:
        """The answer text, or ``None`` if the request failed after every retry.

        Raises:
            BudgetExhausted: the answer is not cached and the budget is used up.
            RequestTooLong: the prompt does not fit the judge's context.
            JudgeError: the endpoint refused the request for good.
        """
        json_mode = want_json and self.json_mode_active()
        key = self.key_for(messages, json_mode=json_mode, max_tokens=max_tokens)
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached.content
        pending = self._pending.get(key)
        if pending is not None:  # the same request is in flight (duplicate pairs): share its answer
            self.stats.shared_answers += 1
            return await asyncio.shield(pending)
        if json_mode and self.response_format == "auto" and not self._json_confirmed:
            # The first uncached JSON request probes alone whether the server accepts JSON mode; the others wait,
            # so a server that refuses it sees one refused request, not one per worker.
            async with self._json_probe:
                if self.json_mode_active() and not self._json_confirmed:
                    try:
                        content = await self._call_with_retries(key, messages, json_mode=True, max_tokens=max_tokens)
                    except _JsonModeUnsupported:
                        self.cache.set_meta(self._json_meta_key, "1")
                        logger.warning(
                            "The endpoint rejects response_format=json_object for %s: lenient parsing from now on.",
                            self.model,
                        )
                    else:
                        self._json_confirmed = content is not None
                        return content
            return await self.ask(messages, max_tokens=max_tokens, want_json=want_json)
        return await self._call_shared(key, messages, json_mode=json_mode, max_tokens=max_tokens)

    async def _call_shared(self, key: str, messages, *, json_mode: bool, max_tokens: int) -> str | None:
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            content = await self._call_with_retries(key, messages, json_mode=json_mode, max_tokens=max_tokens)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # mark retrieved: no "never retrieved" warning when nobody shared it
            raise
        else:
            future.set_result(content)
            return content
        finally:
            del self._pending[key]

    # -- internals -------------------------------------------------------------------------------------------------
    def _check_budget(self) -> None:
        over_calls = self.budget_calls is not None and self.stats.calls >= self.budget_calls
        over_tokens = (
            self.budget_tokens is not None and self.stats.tokens_in + self.stats.tokens_out >= self.budget_tokens
        )
        if over_calls or over_tokens:
            self.budget_exhausted = True
            raise BudgetExhausted()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # Honour the server: never earlier than asked, a little jitter after it.
            retry_after = min(retry_after, MAX_RETRY_AFTER_SECONDS)
            return retry_after + self._rng.uniform(0, 0.1 * retry_after + 0.005)
        cap = min(self.backoff_max, self.backoff_base * (2**attempt))
        return cap / 2 + self._rng.uniform(0, cap / 2)

    async def _call_with_retries(self, key: str, messages, *, json_mode: bool, max_tokens: int) -> str | None:
        attempt = 0
        while True:
            self._check_budget()
            try:
                epoch = await self.concurrency.acquire()
                overload = answered = False
                try:
                    self._check_budget()
                    self.stats.calls += 1
                    content, usage = await self._call_once(
                        messages, json_mode=json_mode, max_tokens=max_tokens, timeout=self.timeout
                    )
                    answered = True
                except _Retryable as err:
                    overload = err.overload
                    raise
                finally:
                    await self.concurrency.release(epoch, overload=overload, answered=answered)
            except _Retryable as err:
                message = redact(str(err), self._secret)
                self.stats.note_error(err.kind, message)
                if err.kind == "connection_error" and not self._ever_answered:
                    await self._refuse_if_never_reachable(message)
                if attempt >= self.max_retries:
                    self.stats.failed_requests += 1
                    logger.warning(
                        "Giving up on a request after %d attempts (last: %s: %s)", attempt + 1, err.kind, message
                    )
                    return None
                delay = self._delay(attempt, err.retry_after)
                logger.debug("Retrying after %s in %.2fs (attempt %d)", err.kind, delay, attempt + 1)
                self.stats.retries += 1
                self.stats.retry_wait_seconds += delay
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self._ever_answered = True
            prompt_tokens, completion_tokens = usage
            self.stats.tokens_in += prompt_tokens
            self.stats.tokens_out += completion_tokens
            self.cache.put(
                key, content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, model=self.model
            )
            return content

    async def _post_patiently(self, body: dict, timeout: float):
        """POST, and when ``timeout`` passes without an answer, keep waiting as long as the server is up.

        Every ``timeout`` seconds without an answer the server is asked for ``GET /models`` (<= 10 s): if it answers
        (any HTTP status), it is alive and most likely still computing this request, so the request is not
        abandoned and resent (which would only queue a second copy behind the first); if it does not, the
        request is abandoned (a timeout, retried). ``MAX_WAIT_FACTOR * timeout`` bounds the whole wait.
        """
        # The client's generic POST (same auth, base URL, timeouts and status-error mapping as
        # chat.completions.create) with the raw JSON answer: less client CPU per request, which is what limits
        # throughput at high concurrency (docs/benchmarks.md, "Labeling").
        hard_limit = timeout * MAX_WAIT_FACTOR
        request = asyncio.ensure_future(openai_post_json(self.client, "/chat/completions", body, hard_limit))
        try:
            waited, counted = 0.0, False
            while True:
                done, _ = await asyncio.wait({request}, timeout=min(timeout, hard_limit - waited))
                if done:
                    return request.result()
                waited += timeout
                if waited >= hard_limit:
                    raise _Retryable("timeout", f"no answer after {waited:g} s", overload=True)
                if not await self._server_alive(min(10.0, max(1.0, timeout))):
                    raise _Retryable("timeout", f"no answer after {waited:g} s, and GET /models failed", overload=True)
                if not counted:
                    self.stats.slow_answers += 1
                    counted = True
                logger.info("No answer after %.0f s; the judge is up, so waiting for it (not resending).", waited)
        finally:
            if not request.done():
                request.cancel()  # closes the connection: serve-judge and vLLM stop generating it
                await asyncio.gather(request, return_exceptions=True)

    async def _refuse_if_never_reachable(self, message: str) -> None:
        """A judge that has not answered once in this run and does not answer ``GET /models`` either is a wrong
        ``--base-url`` or a server that is not running: stop the run now (it resumes from the cache) rather than
        retry every request for hours. Once the judge has answered, connection errors are retried as usual."""
        if await self._server_alive(10.0):
            return
        base_url = str(getattr(self.client, "base_url", "the judge")).rstrip("/")
        raise JudgeError(
            f"cannot reach the judge at {base_url} (nothing answered, not even GET /models; last error: {message}). "
            "Fix: start the server (e.g. `dmoerm serve-judge --model PATH`) or correct --base-url; a rerun resumes"
        )

    async def _server_alive(self, seconds: float) -> bool:
        import openai

        try:
            await openai_get_json(self.client, "/models", seconds)
        except openai.APIConnectionError:  # refused, reset or timed out (APITimeoutError is one)
            return False
        except Exception:  # noqa: BLE001 - any HTTP answer (401, 404, a body that is not JSON): it is up
            return True
        return True

    async def _call_once(
        self, messages, *, json_mode: bool, max_tokens: int, timeout: float
    ) -> tuple[str, tuple[int, int]]:
        from ..utils.extras import require_openai

        openai = require_openai()

        body = {
            "model": self.model,
            "messages": list(messages),
            "temperature": self.temperature,
            "max_tokens": max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        try:
            completion = await self._post_patiently(body, timeout)
        except openai.APITimeoutError as err:
            raise _Retryable("timeout", f"{err} (the judge did not answer or went down)", overload=True) from None
        except openai.APIConnectionError as err:
            cause = f" ({type(err.__cause__).__name__})" if err.__cause__ is not None else ""
            raise _Retryable("connection_error", f"{err}{cause}") from None
        except openai.APIResponseValidationError as err:
            raise _Retryable("bad_response", str(err)) from None
        except openai.APIStatusError as err:
            status = err.status_code
            if status in RETRYABLE_STATUS or status >= 500:
                kind = "rate_limited" if status == 429 else f"http_{status}"
                retry_after = parse_retry_after(err.response.headers)
                raise _Retryable(kind, str(err), retry_after, overload=status in OVERLOAD_STATUS) from None
            text = redact(str(err), self._secret)
            if status == 400 and (
                getattr(err, "code", None) == "context_length_exceeded"
                or "context length" in text.lower()
                or "context_length" in text
            ):
                self.stats.note_error("context_length_exceeded", text)
                raise RequestTooLong(text) from None
            if json_mode and self.response_format == "auto" and status in (400, 422) and "response_format" in text:
                raise _JsonModeUnsupported() from None
            hint = {
                401: " Check the API key (env var named by --api-key-env, or --api-key).",
                403: " The key may lack access to this model.",
                404: " Check --model and --base-url (GET <base-url>/models lists the served models).",
            }
            raise JudgeError(
                f"The judge endpoint refused the request (HTTP {status}): {text}.{hint.get(status, '')}"
            ) from None
        except (ValueError, TypeError, AttributeError, KeyError) as err:  # an unparsable body (JSON decode error...)
            raise _Retryable("bad_response", f"{type(err).__name__}: {err}") from None
        try:
            content = completion["choices"][0]["message"].get("content")
            content = "" if content is None else content  # e.g. a refusal: an undecided verdict, not an error
            if not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
        except (AttributeError, IndexError, TypeError, KeyError) as err:
            raise _Retryable("bad_response", f"not a chat completion ({type(err).__name__}: {err})") from None
        usage = completion.get("usage") if isinstance(completion.get("usage"), dict) else None
        try:
            tokens = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        except (AttributeError, TypeError, ValueError):
            self.stats.calls_without_usage += 1
            tokens = (0, 0)
        return content, tokens


class _JsonModeUnsupported(Exception):
    pass
