"""``dmoerm serve-judge``: a local Hugging Face causal LM behind an OpenAI-compatible HTTP API, for fully offline
labeling (and for testing the ``openai`` client over real HTTP).

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming; ``temperature`` 0 means greedy),
``GET /health`` (with the batching counters). Bound to 127.0.0.1 by default. Requests larger than
``max_request_bytes`` get 413; malformed ones a 4xx with an OpenAI-style ``{"error": {"message", "type", "param",
"code"}}`` body naming the bad parameter. ``response_format`` (JSON mode) is refused with a 400: a small local model
cannot guarantee JSON, and the labeler then falls back to lenient parsing by itself. If the environment variable
``DMOERM_JUDGE_API_KEY`` is set, requests must carry it as a bearer token.

Serving concurrent requests:

- **Batching.** Requests that arrive together are answered by one ``generate`` call (left-padded, up to
  ``max_batch_size``, grouped by prompt length; :class:`dmoerm_trl.serving.batching.DynamicBatcher` collects them,
  :meth:`JudgeModel.generate_batch` runs them). The next batch fills while one runs.
- **Back-pressure.** At most ``max_queue`` requests wait; beyond that a request gets 503 with ``Retry-After``
  (seconds, estimated from the queue and the recent batch time) at once, instead of waiting past its client's
  timeout.
- **Disconnects.** A client that goes away (e.g. its timeout fired) while its request waits is dropped from the
  queue and never generated; one that goes away during generation has its row stopped at the next token.
- **Slow or broken clients.** Every read has a timeout (``read_timeout``): a client that stalls mid-request is
  answered 408 or dropped, and an idle keep-alive connection is closed, so no thread is held forever. A missing,
  negative or non-numeric ``Content-Length`` gets 411/400 and the connection is closed.

Example:
    >>> from dmoerm_trl.labeling.judge_server import start_judge_server
    >>> server = start_judge_server("path/to/causal-lm", port=0)  # doctest: +SKIP
    >>> import openai  # doctest: +SKIP
    >>> client = openai.OpenAI(base_url=server.base_url, api_key="unused")  # doctest: +SKIP
    >>> client.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": "Hi"}],
    ...                                temperature=0, max_tokens=8).choices[0].message.content  # doctest: +SKIP
    >>> server.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import select
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..serving.batching import DynamicBatcher, QueueFull
from .judge_model import GenerationItem, GenerationResult, JudgeModel, RequestError

logger = logging.getLogger(__name__)

__all__ = ["JudgeHTTPServer", "JudgeModel", "RequestError", "parse_chat_request", "start_judge_server"]

DEFAULT_MAX_REQUEST_BYTES = 1_000_000
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_WAIT_MS = 200.0
DEFAULT_MAX_QUEUE = 64
DEFAULT_READ_TIMEOUT = 30.0
API_KEY_ENV = "DMOERM_JUDGE_API_KEY"
_DISCONNECT_POLL_SECONDS = 0.05


def _text_content(content, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(400, "Only text content parts are supported.", f"messages[{index}].content[{j}]")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(
        400, "A message's content must be a string or a list of text parts.", f"messages[{index}].content"
    )


def parse_chat_request(request, served_model: str, max_new_tokens: int) -> dict:
    """Validate a chat completion request body; returns generation arguments or raises :class:`RequestError`."""
    if not isinstance(request, dict):
        raise RequestError(400, "The body must be a JSON object.")
    if request.get("stream"):
        raise RequestError(400, "Streaming is not supported by this server; send stream=false.", "stream")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "Missing 'model'.", "model")
    if model != served_model:
        raise RequestError(
            404,
            f"The model {model!r} does not exist here; this server serves {served_model!r}.",
            "model",
            "model_not_found",
        )
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list.", "messages")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(400, "Each message must be an object.", f"messages[{index}]")
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise RequestError(
                400, f"Unsupported role {role!r}; use system, user or assistant.", f"messages[{index}].role"
            )
        clean.append({"role": role, "content": _text_content(message.get("content"), index)})
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if request.get(name):
            raise RequestError(400, f"'{name}' is not supported by this server.", name)
    response_format = request.get("response_format")
    if response_format and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise RequestError(
            400,
            "response_format (JSON mode) is not supported by this server; ask for JSON in the "
            "prompt and parse leniently.",
            "response_format",
            "unsupported_parameter",
        )
    n = request.get("n", 1)
    if n != 1:
        raise RequestError(400, "Only n=1 is supported.", "n")
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(256, max_new_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, "max_tokens must be a positive integer.", "max_tokens")
    temperature = request.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise RequestError(400, "temperature must be a number in [0, 2].", "temperature")
    top_p = request.get("top_p", 1.0)
    if top_p is None:
        top_p = 1.0
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise RequestError(400, "top_p must be a number in (0, 1].", "top_p")
    seed = request.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "seed must be an integer.", "seed")
    stop = request.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop)):
        raise RequestError(400, "stop must be a string or a list of at most 4 strings.", "stop")
    return {
        "messages": clean,
        "max_tokens": min(max_tokens, max_new_tokens),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "seed": seed,
        "stop": stop,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: JudgeHTTPServer

    def setup(self):
        self.timeout = self.server.read_timeout  # every read of this connection; None would wait forever
        super().setup()

    def log_message(self, format, *args):  # the stdlib's signature
        if self.server.verbose:
            logger.info("%s - %s", self.address_string(), format % args)

    def _send_json(self, status: int, payload: dict, close: bool = False, headers: dict | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)
        except OSError as err:  # the client left before its answer (BrokenPipe, reset): nothing to send it to
            self.close_connection = True
            logger.info("A client went away before its %d answer was sent (%s).", status, type(err).__name__)

    def _fail(self, error: RequestError, close: bool = False, headers: dict | None = None) -> None:
        self._send_json(error.status, error.body(), close=close, headers=headers)

    def _authorized(self) -> bool:
        expected = os.environ.get(API_KEY_ENV)
        if not expected:
            return True
        return self.headers.get("Authorization", "") == f"Bearer {expected}"

    def _client_gone(self) -> bool:
        """True when the client closed (or reset) its connection; pipelined bytes do not count."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def do_GET(self):  # the stdlib's name
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._send_json(200, {"status": "ok", "batching": self.server.metrics()})
        elif path == "/v1/models":
            if not self._authorized():
                return self._fail(RequestError(401, "Missing or wrong bearer token.", code="invalid_api_key"))
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.server.model_name,
                            "object": "model",
                            "created": self.server.created,
                            "owned_by": "local",
                        }
                    ],
                },
            )
        else:
            self._fail(RequestError(404, f"No route GET {path}. Routes: GET /v1/models, POST /v1/chat/completions."))

    def _read_body(self) -> bytes | None:
        """The request body, or ``None`` after answering why it cannot be read (the connection is then closed)."""
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._fail(RequestError(411, "Content-Length is required."), close=True)
            return None
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            self._fail(RequestError(400, "Content-Length must be a non-negative integer."), close=True)
            return None
        if length > self.server.max_request_bytes:  # refuse before reading the body
            self._fail(
                RequestError(
                    413,
                    f"The request has {length} bytes; the limit is "
                    f"{self.server.max_request_bytes} (--max-request-bytes).",
                ),
                close=True,
            )
            return None
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            body = b""
        if len(body) < length:  # the client stalled past the read timeout, or closed mid-body
            self._fail(
                RequestError(408, f"The request body did not arrive within {self.server.read_timeout:g} s."),
                close=True,
            )
            return None
        return body

    def do_POST(self):
        path = self.path.split("?")[0].rstrip("/")
        body = self._read_body()
        if body is None:
            return
        if path != "/v1/chat/completions":
            return self._fail(RequestError(404, f"No route POST {path}. Use POST /v1/chat/completions."))
        if not self._authorized():
            return self._fail(RequestError(401, "Missing or wrong bearer token.", code="invalid_api_key"))
        try:
            request = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return self._fail(RequestError(400, f"The body is not valid JSON: {err}."))
        try:
            arguments = parse_chat_request(request, self.server.model_name, self.server.judge.max_new_tokens)
            item = self.server.judge.prepare(**arguments)
            result = self._generate(item)
        except RequestError as error:
            return self._fail(error, headers=error.headers)
        except Exception as err:  # a bug or the model failing: 500, and the server keeps serving
            logger.exception("Generation failed")
            return self._fail(RequestError(500, f"Generation failed: {type(err).__name__}: {err}"))
        if result is None:  # the client went away: nobody to answer
            self.close_connection = True
            return
        self._send_json(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.server.model_name,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "logprobs": None,
                        "finish_reason": result.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                },
            },
        )

    def _generate(self, item: GenerationItem) -> GenerationResult | None:
        """Queue the item with the batcher and wait for its answer, watching the client; ``None`` if it left."""
        server = self.server
        future = asyncio.run_coroutine_threadsafe(server.batcher.submit([item]), server.loop)
        while True:
            try:
                return future.result(timeout=_DISCONNECT_POLL_SECONDS)[0]
            except concurrent.futures.TimeoutError:
                pass
            except QueueFull:
                raise RequestError(
                    503,
                    "The judge is busy: its queue is full. Retry after the Retry-After delay.",
                    headers={"Retry-After": str(server.retry_after_seconds())},
                ) from None
            except RuntimeError:
                if not server.batcher.running:  # shutting down
                    raise RequestError(503, "The judge is shutting down.") from None
                raise
            if self._client_gone():
                item.cancelled.set()  # stops its row if it is being generated
                future.cancel()  # drops it from the queue if it is not
                server.note_disconnect()
                return None


class JudgeHTTPServer(ThreadingHTTPServer):
    """The HTTP server; its batcher runs on an event loop in a background thread, generation in a worker thread."""

    daemon_threads = True

    def __init__(
        self,
        judge: JudgeModel,
        model_name: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        verbose: bool = False,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ):
        if read_timeout <= 0:
            raise ValueError(f"read_timeout={read_timeout}: must be > 0 seconds.")
        self.batcher = DynamicBatcher(  # validates the batching options before anything is bound or started
            self._process,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            sort_key=lambda item: item.prompt_tokens,
            name="serve-judge",
        )
        super().__init__((host, port), _Handler)
        self.judge, self.model_name = judge, model_name
        self.max_request_bytes, self.verbose, self.read_timeout = max_request_bytes, verbose, read_timeout
        self.created = int(time.time())
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._batch_seconds: float | None = None  # moving average of one batch's generation time
        self._current: list[GenerationItem] = []  # the batch being generated
        self.batch_sizes: list[int] = []  # items per generate_batch call (the last 10,000)
        self.batch_seconds: list[float] = []  # seconds per generate_batch call (the last 100)
        self.disconnects = 0  # clients that went away while queued or generating
        self.cancelled_in_batch = 0  # items whose client left after their batch was formed
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="judge-batcher-loop", daemon=True)
        self._loop_thread.start()
        asyncio.run_coroutine_threadsafe(self.batcher.start(), self.loop).result(10)

    def _process(self, items: list[GenerationItem]) -> list[GenerationResult | None]:
        started = time.perf_counter()
        self._current = items
        try:
            results = self.judge.generate_batch(items)
        finally:
            self._current = []
        elapsed = time.perf_counter() - started
        with self._lock:
            self.batch_sizes = self.batch_sizes[-9_999:] + [len(items)]
            self.batch_seconds = self.batch_seconds[-99:] + [round(elapsed, 3)]
            self.cancelled_in_batch += sum(item.cancelled.is_set() for item in items)
            self._batch_seconds = elapsed if self._batch_seconds is None else 0.7 * self._batch_seconds + 0.3 * elapsed
        return results

    def note_disconnect(self) -> None:
        with self._lock:
            self.disconnects += 1

    def retry_after_seconds(self) -> int:
        """How long a refused client should wait: the batches ahead of it times the recent batch time (>= 1 s)."""
        batches_ahead = math.ceil(self.batcher.metrics()["queue_depth"] / self.batcher.max_batch_size) + 1
        return max(1, math.ceil(batches_ahead * (self._batch_seconds or 1.0)))

    def metrics(self) -> dict:
        """The batcher's counters plus this server's: generate calls, largest batch, disconnects."""
        with self._lock:
            sizes, seconds = list(self.batch_sizes), list(self.batch_seconds)
        return {
            **self.batcher.metrics(),
            "generate_calls": len(sizes),
            "max_batch_size_seen": max(sizes, default=0),
            "disconnects": self.disconnects,
            "cancelled_in_batch": self.cancelled_in_batch,
            "mean_batch_seconds": round(self._batch_seconds, 3) if self._batch_seconds is not None else None,
            "recent_batches": [{"size": n, "seconds": t} for n, t in zip(sizes[-len(seconds) :], seconds)],
        }

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> JudgeHTTPServer:
        """Serve in a background thread (for tests and notebooks); :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.serve_forever, name="judge-server", daemon=True)
        self._thread.start()
        return self

    def server_close(self) -> None:
        super().server_close()
        loop = getattr(self, "loop", None)  # None when binding the port failed (socketserver closes, then raises)
        if (
            loop is not None and loop.is_running()
        ):  # queued requests fail (503); the batch being generated stops at its next token
            for item in list(self._current):
                item.cancelled.set()
            asyncio.run_coroutine_threadsafe(self.batcher.stop(drain=False), self.loop).result(600)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._loop_thread.join(10)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(10)


def start_judge_server(
    model_path: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_new_tokens: int = 512,
    dtype: str = "auto",
    device: str = "cpu",
    chat_template: str | None = None,
    verbose: bool = False,
    background: bool = True,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
):
    """Load the model and serve it; returns the running :class:`JudgeHTTPServer` (``background=True``)."""
    judge = JudgeModel(
        model_path, dtype=dtype, device=device, chat_template=chat_template, max_new_tokens=max_new_tokens
    )
    server = JudgeHTTPServer(
        judge,
        model_name or Path(model_path).name,
        host,
        port,
        max_request_bytes,
        verbose,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        read_timeout=read_timeout,
    )
    if background:
        return server.start()
    return server
