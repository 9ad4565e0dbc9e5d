"""The ``dmoerm serve`` HTTP API (FastAPI): ``/get_reward`` (OpenRLHF), ``/v1/rewards``, ``/health``, ``/metrics``.

Every request is read with a size limit, parsed and checked by hand so that a bad request gets one line saying what
is wrong (``{"error": {"status": 400, "message": "query[3]: expected a string, got int"}}``), never a traceback.
Checked items are tokenized in a tokenizer thread and queued on a :class:`~dmoerm_trl.serving.batching.DynamicBatcher`
whose worker thread runs the model, so the event loop keeps accepting requests during a forward pass. A client that
disconnects before its items reach a batch gets its items dropped.

Status codes: 200; 400 malformed JSON, wrong types, empty lists, unknown categories, over-long texts; 401 missing
or wrong bearer token; 404/405 unknown path or method; 413 body or item count over the limits; 503 queue full or
shutting down (``Retry-After: 1``); 500 only for a failure inside the model, as one JSON line (details in the server
log).

Example:
    >>> from dmoerm_trl.serving.app import ServeSettings, create_app        # doctest: +SKIP
    >>> app = create_app(RewardEngine.from_pretrained("./my-dmoerm"), ServeSettings())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import json
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import DynamicBatcher, QueueFull
from .engine import InputError, RewardEngine

logger = logging.getLogger("dmoerm_trl.serve")

__all__ = ["API_KEY_ENV", "ApiError", "ServeSettings", "create_app"]

API_KEY_ENV = "DMOERM_SERVE_API_KEY"
INLINE_TOKENIZE_BYTES = 64 * 1024  # requests up to this size are tokenized on the event loop


@dataclasses.dataclass
class ServeSettings:
    """Batching and safety limits of the server (the ``dmoerm serve`` flags)."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 4096  # items waiting for a batch; beyond it requests get 503
    max_request_bytes: int = 16 * 1024 * 1024
    max_items_per_request: int = 1024
    api_key: str | None = None  # a bearer token required on every endpoint but /health; never logged

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "max_request_bytes", "max_items_per_request"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.max_items_per_request > self.max_queue:
            raise ValueError(
                f"--max-items-per-request ({self.max_items_per_request}) cannot exceed the queue size "
                f"(--max-queue {self.max_queue})"
            )

    def __repr__(self) -> str:  # never print the key
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "api_key"}
        return f"ServeSettings({fields}, api_key={'set' if self.api_key else 'unset'})"

    @classmethod
    def api_key_from_env(cls, name: str = API_KEY_ENV) -> str | None:
        return os.environ.get(name) or None


class ApiError(Exception):
    """An error answered as ``{"error": {"status", "message"}}`` with that HTTP status."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


def _finite(value):
    return value if value is None or math.isfinite(value) else None  # JSON has no NaN/inf


class _Stats:
    """Server-side counters for /metrics (the batcher keeps its own)."""

    def __init__(self):
        self.started = time.time()
        self.requests = collections.Counter()  # by endpoint
        self.responses = collections.Counter()  # by status code

    def snapshot(self) -> dict:
        statuses = {str(code): count for code, count in sorted(self.responses.items())}
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "requests_by_endpoint": dict(self.requests),
            "responses_by_status": statuses,
            "client_errors": sum(c for code, c in self.responses.items() if 400 <= code < 500),
            "server_errors": sum(c for code, c in self.responses.items() if code >= 500),
        }


# ----------------------------------------------------------------------------------------------- request checks
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


def _type_name(value) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _check_item_count(value: list, field: str, settings: ServeSettings) -> None:
    if len(value) > settings.max_items_per_request:
        raise ApiError(
            413,
            f"`{field}` has {len(value)} items, more than this server accepts per request "
            f"({settings.max_items_per_request}); split the request",
        )


def _string_list(data: dict, field: str, settings: ServeSettings, required: bool = True) -> list[str] | None:
    value = data.get(field)
    if value is None:
        if required:
            raise ApiError(400, f"`{field}` is missing; send a JSON array of strings")
        return None
    if not isinstance(value, list):
        raise ApiError(400, f"`{field}` must be an array of strings, got {_type_name(value)}")
    if not value:
        raise ApiError(400, f"`{field}` is empty; send at least one text")
    _check_item_count(value, field, settings)
    for index, text in enumerate(value):
        if not isinstance(text, str):
            raise ApiError(400, f"{field}[{index}]: expected a string, got {_type_name(text)}")
    return value


def _conversations(data: dict, settings: ServeSettings) -> list:
    value = data.get("conversations")
    if value is None:
        raise ApiError(400, "`conversations` is missing; send an array of message lists")
    if not isinstance(value, list):
        raise ApiError(400, f"`conversations` must be an array of message lists, got {_type_name(value)}")
    if not value:
        raise ApiError(400, "`conversations` is empty; send at least one conversation")
    _check_item_count(value, "conversations", settings)
    for index, conversation in enumerate(value):
        where = f"conversations[{index}]"
        if isinstance(conversation, str):
            continue  # an already rendered text
        if not isinstance(conversation, list) or not conversation:
            raise ApiError(400, f"{where}: expected a non-empty list of messages, got {_type_name(conversation)}")
        for turn, message in enumerate(conversation):
            if not isinstance(message, dict):
                raise ApiError(400, f"{where}[{turn}]: a message must be an object, got {_type_name(message)}")
            if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise ApiError(400, f"{where}[{turn}]: a message needs string `role` and `content`")
        if conversation[-1]["role"] != "assistant":
            raise ApiError(
                400,
                f"{where}: the last message must be the assistant's response to score, got role "
                f"{conversation[-1]['role']!r}",
            )
    return value


def _categories(data: dict, n: int) -> list | None:
    value = data.get("categories")
    if value is None:
        return None
    if isinstance(value, str):
        return [value] * n
    if not isinstance(value, list) or len(value) != n:
        raise ApiError(
            400,
            f"`categories` must be a category name or an array of {n} names (null: route), got "
            f"{_type_name(value) if not isinstance(value, list) else f'{len(value)} entries'}",
        )
    for index, category in enumerate(value):
        if category is not None and not isinstance(category, str):
            raise ApiError(400, f"categories[{index}]: expected a category name or null, got {_type_name(category)}")
    return value


# ----------------------------------------------------------------------------------------------------- the app
def create_app(engine: RewardEngine, settings: ServeSettings | None = None, on_ready=None) -> FastAPI:
    """The FastAPI app serving ``engine``; the batcher starts and stops (draining) with the app's lifespan.

    ``on_ready(app)`` is called once the batcher runs (the CLI prints its "ready" line there).

    Example:
        >>> app = create_app(engine, ServeSettings(max_batch_size=64))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=5000)                # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    stats = _Stats()
    batcher = DynamicBatcher(
        engine.score_items,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        sort_key=len,  # token length: similar lengths share a batch, so padding stays low
        name="dmoerm-serve",
    )
    # Small requests are tokenized right on the event loop (a hop to another thread costs more than the work while
    # the model thread holds the GIL); large ones in a tokenizer thread, so the loop keeps serving. The lock keeps
    # the two from using the (not thread-safe) tokenizer at once.
    tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmoerm-serve-tokenizer")
    tokenizer_lock = threading.Lock()
    expected_auth = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        if on_ready is not None:
            on_ready(app)
        try:
            yield
        finally:
            # uvicorn has answered the requests in flight by now (graceful shutdown); finish anything still queued.
            await batcher.stop(drain=True)
            tokenizer_pool.shutdown(wait=True)
            logger.info("dmoerm serve: stopped after %s", batcher.metrics())

    app = FastAPI(title="dmoerm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.engine, app.state.settings, app.state.stats = batcher, engine, settings, stats

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        stats.responses[err.status] += 1
        return _error_response(err.status, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        stats.responses[err.status_code] += 1
        message = {404: f"no endpoint {request.url.path}; see /health", 405: f"{request.method} is not allowed here"}
        return _error_response(err.status_code, message.get(err.status_code, str(err.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):  # the backstop: never a traceback to the client
        stats.responses[500] += 1
        logger.exception("dmoerm serve: unexpected error on %s", request.url.path)
        return _error_response(500, f"internal error ({type(err).__name__}); see the server log")

    def authorize(request: Request) -> None:
        if expected_auth is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected_auth):
            raise ApiError(
                401, "missing or wrong bearer token (Authorization: Bearer ...)", {"WWW-Authenticate": "Bearer"}
            )

    async def read_json(request: Request) -> dict:
        limit = settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, f"bad Content-Length header {declared!r}")
            if int(declared) > limit:
                raise ApiError(
                    413, f"request body of {declared} bytes exceeds the limit ({limit}, --max-request-bytes)"
                )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body exceeds the limit ({limit} bytes, --max-request-bytes)")
        if not body:
            raise ApiError(400, "empty request body; send a JSON object")
        request.state.body_bytes = len(body)
        try:
            data = json.loads(body)
        except UnicodeDecodeError:
            raise ApiError(400, "the request body is not UTF-8 JSON") from None
        except json.JSONDecodeError as err:
            raise ApiError(400, f"malformed JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the body must be a JSON object, got {_type_name(data)}")
        return data

    def locked(function, *args):
        with tokenizer_lock:
            return function(*args)

    async def tokenize(request_bytes: int, function, *args):
        try:
            if request_bytes <= INLINE_TOKENIZE_BYTES:
                return locked(function, *args)
            return await asyncio.get_running_loop().run_in_executor(tokenizer_pool, locked, function, *args)
        except InputError as err:
            raise ApiError(400, str(err)) from None
        except RuntimeError as err:  # the pool is shut down: the server is stopping
            raise ApiError(503, f"the server is shutting down ({err})", {"Retry-After": "1"}) from None

    async def wait_for_disconnect(request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    async def score(request: Request, items) -> list[dict]:
        """Queue the items; if the client disconnects first, cancel (its queued items are dropped)."""
        if not batcher.running:
            raise ApiError(503, "the server is shutting down", {"Retry-After": "1"})
        submit = asyncio.ensure_future(batcher.submit(items))
        disconnect = asyncio.ensure_future(wait_for_disconnect(request))
        try:
            await asyncio.wait({submit, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect.cancel()
            if not submit.done():
                submit.cancel()
        if submit.cancelled():
            raise ApiError(499, "client disconnected")
        try:
            return submit.result()
        except QueueFull as err:
            raise ApiError(503, f"busy: {err}; retry", {"Retry-After": "1"}) from None
        except RuntimeError as err:
            if not batcher.running:
                raise ApiError(503, "the server is shutting down", {"Retry-After": "1"}) from None
            raise _scoring_failed(err) from None
        except Exception as err:  # noqa: BLE001 - any other failure of the model: a clean HTTP 500
            raise _scoring_failed(err) from None

    def _scoring_failed(err: Exception) -> ApiError:
        logger.error("dmoerm serve: a batch failed: %s: %s", type(err).__name__, err)
        return ApiError(500, f"scoring failed ({type(err).__name__}: {err})")

    @app.get("/health")
    async def health():
        stats.requests["/health"] += 1
        ready = batcher.running
        status = 200 if ready else 503
        stats.responses[status] += 1
        body = {"status": "ok" if ready else "stopping", "ready": ready, **engine.info()}
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics(request: Request):
        stats.requests["/metrics"] += 1
        authorize(request)
        stats.responses[200] += 1
        return {"model": engine.model_id, "server": stats.snapshot(), "batcher": batcher.metrics()}

    @app.post("/get_reward")
    async def get_reward(request: Request):
        stats.requests["/get_reward"] += 1
        authorize(request)
        data = await read_json(request)
        queries = _string_list(data, "query", settings)
        prompts = _string_list(data, "prompts", settings, required=False)
        if prompts is not None and len(prompts) != len(queries):
            raise ApiError(400, f"`prompts` has {len(prompts)} items but `query` has {len(queries)}; send one each")
        items = await tokenize(request.state.body_bytes, engine.encode_texts, queries, prompts)
        results = await score(request, items)
        rewards = [_finite(r["reward"]) for r in results]
        stats.responses[200] += 1
        return {"rewards": rewards, "scores": rewards, "extra_logs": {}}

    @app.post("/v1/rewards")
    async def rewards(request: Request):
        stats.requests["/v1/rewards"] += 1
        authorize(request)
        data = await read_json(request)
        conversations = _conversations(data, settings)
        categories = _categories(data, len(conversations))
        items = await tokenize(request.state.body_bytes, engine.encode_conversations, conversations, categories)
        results = await score(request, items)
        for result in results:
            result["reward"] = _finite(result["reward"])
            result["capability_rewards"] = {k: _finite(v) for k, v in result["capability_rewards"].items()}
        stats.responses[200] += 1
        return {"model": engine.model_id, "results": results}

    return app
