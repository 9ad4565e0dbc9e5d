"""A reward served over HTTP by ``dmoerm serve`` (or any server with OpenRLHF's ``/get_reward``), as a reward function.

:class:`RemoteReward` has TRL's reward-function signature ``f(prompts, completions, **kwargs) -> list[float]``, so it
goes into GRPO/RLOO ``reward_funcs`` (no ``reward_processing_classes`` entry needed: pass ``None`` for it), and into
:class:`~dmoerm_trl.rl.BestOfNSampler` and :class:`~dmoerm_trl.rl.GoldRewardCallback` as the reward / gold reward.

It builds the text TRL builds for a reward *model*, so a served model gives the rewards it would give in process:

- conversational prompts: prompt messages + the completion as the assistant turn, sent as messages to
  ``/v1/rewards``; the server renders them with the model's chat template (as TRL and ``compute_rewards`` do);
- text prompts: ``prompt + completion`` (no EOS added) sent to ``/get_reward``, with the prompt in ``prompts`` so a
  DMoERM routes on the prompt alone (``route_on_prompts=False``: the model routes the full text itself).

Large calls are split into requests of ``batch_size`` items sent ``max_concurrency`` at a time (the server batches
them together); connection errors and HTTP 502/503/504 are retried with exponential backoff (``Retry-After`` is
honoured); other errors raise :class:`RemoteRewardError` with the server's message.

Example:
    >>> from dmoerm_trl.rl import RemoteReward
    >>> reward = RemoteReward("http://127.0.0.1:5000")                       # doctest: +SKIP
    >>> trainer = GRPOTrainer(model=policy, reward_funcs=reward, ...)        # doctest: +SKIP
    >>> reward(prompts=["2+2="], completions=["4"])                          # doctest: +SKIP
    [0.734]
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .scoring import completion_text, is_conversational_prompt

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["RemoteReward", "RemoteRewardError"]

API_KEY_ENV = "DMOERM_SERVE_API_KEY"
_RETRY_STATUSES = (502, 503, 504)
_ENDPOINT_SUFFIXES = ("/get_reward", "/v1/rewards", "/health", "/metrics")


class RemoteRewardError(RuntimeError):
    """The reward server refused a request, failed, or could not be reached after the retries."""


class RemoteReward:
    """A reward function backed by a reward server (``dmoerm serve``).

    Args:
        url: the server, e.g. ``http://127.0.0.1:5000`` (a trailing ``/get_reward`` is accepted).
        api_key: bearer token; default: the environment variable ``api_key_env`` (unset: no token sent).
        timeout: seconds to wait for one request (connect and read).
        max_retries: retries of one request after a connection error or HTTP 502/503/504 (0: none).
        backoff: first retry delay in seconds, doubled each retry (capped at 10 s).
        batch_size: items per request; larger calls are split.
        max_concurrency: requests in flight at once for one call.
        route_on_prompts: send text prompts as ``prompts`` so a DMoERM routes on them.
        name: the reward's name in TRL's logs (``rewards/<name>/mean``).
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        api_key_env: str = API_KEY_ENV,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        batch_size: int = 64,
        max_concurrency: int = 4,
        route_on_prompts: bool = True,
        name: str = "remote_reward",
    ):
        try:
            import httpx
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "RemoteReward needs httpx: pip install 'dmoerm-trl[serve]'", name="httpx"
            ) from None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        for field, value, least in (
            ("batch_size", batch_size, 1),
            ("max_concurrency", max_concurrency, 1),
            ("max_retries", max_retries, 0),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{field} must be an integer >= {least}, got {value!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        base = url.rstrip("/")
        for suffix in _ENDPOINT_SUFFIXES:
            base = base.removesuffix(suffix)
        self.url = base
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.route_on_prompts = route_on_prompts
        self.__name__ = name
        api_key = api_key if api_key is not None else (os.environ.get(api_key_env) or None)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            headers=headers,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            trust_env=False,  # no proxy from the environment between a trainer and its reward server
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.retries = 0  # total retries made (connection errors and 502/503/504), for monitoring

    def __repr__(self) -> str:  # never shows the token
        return f"RemoteReward({self.url!r}, name={self.__name__!r})"

    # --------------------------------------------------------------------------------------------- transport
    def _post(self, path: str, payload: dict) -> dict:
        import httpx

        url = self.url + path
        attempt = 0
        while True:
            try:
                response = self._client.post(url, json=payload)
            except httpx.TimeoutException as err:
                if isinstance(err, (httpx.ConnectTimeout, httpx.PoolTimeout)) and attempt < self.max_retries:
                    reason, delay = f"{type(err).__name__}", None
                else:
                    raise RemoteRewardError(
                        f"{url}: no answer within {self.timeout:g} s ({type(err).__name__}); raise timeout= or "
                        "check the server"
                    ) from None
            except httpx.TransportError as err:  # refused, reset, closed mid-response
                if attempt >= self.max_retries:
                    raise RemoteRewardError(
                        f"{url}: cannot reach the reward server after {attempt + 1} attempts "
                        f"({type(err).__name__}: {err}); is `dmoerm serve` running?"
                    ) from None
                reason, delay = f"{type(err).__name__}", None
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise RemoteRewardError(f"{url}: the answer is not JSON") from None
                message = _error_message(response)
                if response.status_code not in _RETRY_STATUSES or attempt >= self.max_retries:
                    raise RemoteRewardError(f"{url}: HTTP {response.status_code}: {message}")
                reason, delay = f"HTTP {response.status_code}", _retry_after(response)
            delay = delay if delay is not None else min(10.0, self.backoff * 2**attempt)
            attempt += 1
            self.retries += 1
            logger.warning("%s: %s, retry %d/%d in %.2f s", url, reason, attempt, self.max_retries, delay)
            time.sleep(delay)

    def _map_chunks(self, path: str, payloads: list[dict]) -> list[dict]:
        if len(payloads) == 1 or self.max_concurrency == 1:
            return [self._post(path, payload) for payload in payloads]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="remote-reward")
        return list(self._pool.map(lambda payload: self._post(path, payload), payloads))

    def _chunks(self, n: int) -> list[slice]:
        return [slice(start, min(n, start + self.batch_size)) for start in range(0, n, self.batch_size)]

    # --------------------------------------------------------------------------------------------- endpoints
    def score_texts(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        """Rewards of full texts via ``/get_reward`` (``prompts``: route a DMoERM on them).

        Example:
            >>> RemoteReward("http://127.0.0.1:5000").score_texts(["Q: 2+2? A: 4"])  # doctest: +SKIP
            [0.52]
        """
        texts = list(texts)
        if prompts is not None and len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts; pass one prompt per text")
        values = self._post_chunked("/get_reward", "query", texts, "prompts", prompts, "rewards")
        return [math.nan if value is None else float(value) for value in values]

    def score_conversations(self, conversations: Sequence, categories=None) -> list[dict]:
        """Per-conversation ``{reward, category, router_prob, capability_rewards}`` via ``/v1/rewards``.

        Example:
            >>> RemoteReward(url).score_conversations([[{"role": "user", "content": "Hi"},          # doctest: +SKIP
            ...                                         {"role": "assistant", "content": "Hello!"}]])
            [{'reward': 0.12, 'category': 'chitchat', 'router_prob': 0.61, 'capability_rewards': {...}}]
        """
        conversations = list(conversations)
        if isinstance(categories, str):
            categories = [categories] * len(conversations)
        return self._post_chunked("/v1/rewards", "conversations", conversations, "categories", categories, "results")

    def _post_chunked(self, endpoint: str, key: str, items: list, extra_key: str, extra, answer_key: str) -> list:
        """POST ``items`` (and the parallel ``extra`` list, if any) in chunks; the answers' ``answer_key`` lists,
        concatenated in order, each checked to have one entry per item."""
        payloads = []
        for part in self._chunks(len(items)):
            payload = {key: items[part]}
            if extra is not None:
                payload[extra_key] = list(extra[part])
            payloads.append(payload)
        collected: list = []
        for payload, answer in zip(payloads, self._map_chunks(endpoint, payloads)):
            values = answer.get(answer_key) if isinstance(answer, dict) else None
            if not isinstance(values, list) or len(values) != len(payload[key]):
                raise RemoteRewardError(
                    f"{self.url}{endpoint}: expected {len(payload[key])} {answer_key}, got {str(values)[:200]}"
                )
            collected.extend(values)
        return collected

    def health(self) -> dict:
        """The server's ``/health`` (model id, categories, ready)."""
        import httpx

        try:
            response = self._client.get(self.url + "/health")
        except httpx.TransportError as err:
            raise RemoteRewardError(f"{self.url}/health: cannot reach the reward server ({err})") from None
        return response.json()

    # ---------------------------------------------------------------------------------- the reward function
    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        """TRL's reward-function call: one reward per (prompt, completion); extra keyword arguments are ignored."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions; pass one prompt each")
        if not prompts:
            return []
        if is_conversational_prompt(prompts[0]):
            conversations = []
            for index, (prompt, completion) in enumerate(zip(prompts, completions)):
                if not is_conversational_prompt(prompt):
                    raise TypeError(f"prompt {index} is not a message list while prompt 0 is; pass one kind")
                if isinstance(completion, str):
                    completion = [{"role": "assistant", "content": completion}]
                conversations.append(list(prompt) + list(completion))
            rewards = [r["reward"] for r in self.score_conversations(conversations)]
            return [math.nan if r is None else float(r) for r in rewards]
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompt {index} is a {type(prompt).__name__}; pass strings or message lists")
        texts = [prompt + completion_text(completion) for prompt, completion in zip(prompts, completions)]
        return self.score_texts(texts, list(prompts) if self.route_on_prompts else None)

    def close(self) -> None:
        """Close the connections (also done at garbage collection)."""
        self._client.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _error_message(response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if error is not None:
            return str(error)
    except (ValueError, AttributeError):
        pass
    return response.text[:300] or response.reason_phrase


def _retry_after(response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(30.0, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None
