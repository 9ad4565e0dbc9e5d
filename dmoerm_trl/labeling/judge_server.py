"""``dmoerm serve-judge``: a local Hugging Face causal LM behind an OpenAI-compatible HTTP API, for fully offline
labeling (and for testing the ``openai`` client over real HTTP).

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming; ``temperature`` 0 means greedy),
``GET /health``. Bound to 127.0.0.1 by default. Requests larger than ``max_request_bytes`` get 413; malformed ones a
4xx with an OpenAI-style ``{"error": {"message", "type", "param", "code"}}`` body naming the bad parameter.
``response_format`` (JSON mode) is refused with a 400: a small local model cannot guarantee JSON, and the labeler
then falls back to lenient parsing by itself. If the environment variable ``DMOERM_JUDGE_API_KEY`` is set, requests
must carry it as a bearer token. Generation is serialized (one at a time); the model runs under ``torch.no_grad``.

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

import json
import logging
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 1_000_000
API_KEY_ENV = "DMOERM_JUDGE_API_KEY"


class RequestError(Exception):
    """A request the server refuses: HTTP status, message, offending parameter, error code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class JudgeModel:
    """A causal LM and its tokenizer, answering chat messages (safetensors weights; no remote code)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        dtype: str = "auto",
        device: str = "cpu",
        chat_template: str | os.PathLike | None = None,
        max_new_tokens: int = 512,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if chat_template is not None:
            self.tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.path}: the tokenizer has no chat template. Fix: pass --chat-template FILE.jinja.")
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch_dtype, use_safetensors=True)
        self.model.to(device).eval()
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        )
        self._lock = threading.Lock()

    def generate(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> tuple[str, int, int, str]:
        """Returns (text, prompt tokens, completion tokens, finish reason)."""
        import torch

        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        input_ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)
        prompt_tokens = int(input_ids.shape[1])
        if self.context_length is not None:
            room = self.context_length - prompt_tokens
            if room <= 0:
                raise RequestError(
                    400,
                    f"The prompt has {prompt_tokens} tokens; this model's context is "
                    f"{self.context_length}. Shorten the messages.",
                    "messages",
                    "context_length_exceeded",
                )
            max_tokens = min(max_tokens, room)
        kwargs = {"max_new_tokens": max_tokens, "pad_token_id": self.pad_id, "eos_token_id": sorted(self.eos_ids)}
        if temperature > 0:
            kwargs |= {"do_sample": True, "temperature": temperature, "top_p": top_p}
        else:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with self._lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        new_ids = output[0, prompt_tokens:].tolist()
        finish = (
            "stop" if new_ids and new_ids[-1] in self.eos_ids else ("length" if len(new_ids) >= max_tokens else "stop")
        )
        answer = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        for marker in stop or []:
            if marker and marker in answer:
                answer, finish = answer[: answer.index(marker)], "stop"
        return answer, prompt_tokens, len(new_ids), finish


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

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        if self.server.verbose:
            logger.info("%s - %s", self.address_string(), format % args)

    def _send_json(self, status: int, payload: dict, close: bool = False) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, error: RequestError, close: bool = False) -> None:
        self._send_json(error.status, error.body(), close=close)

    def _authorized(self) -> bool:
        expected = os.environ.get(API_KEY_ENV)
        if not expected:
            return True
        return self.headers.get("Authorization", "") == f"Bearer {expected}"

    def do_GET(self):  # noqa: N802 - the stdlib's name
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._send_json(200, {"status": "ok"})
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

    def do_POST(self):  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return self._fail(RequestError(411, "Content-Length is required."), close=True)
        try:
            length = int(length_header)
        except ValueError:
            return self._fail(RequestError(400, "Content-Length is not a number."), close=True)
        if length > self.server.max_request_bytes:  # refuse before reading the body
            return self._fail(
                RequestError(
                    413,
                    f"The request has {length} bytes; the limit is "
                    f"{self.server.max_request_bytes} (--max-request-bytes).",
                ),
                close=True,
            )
        body = self.rfile.read(length)
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
            text, prompt_tokens, completion_tokens, finish = self.server.judge.generate(**arguments)
        except RequestError as error:
            return self._fail(error)
        except Exception as err:  # a bug or the model failing: 500, and the server keeps serving
            logger.exception("Generation failed")
            return self._fail(RequestError(500, f"Generation failed: {type(err).__name__}: {err}"))
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
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


class JudgeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        judge: JudgeModel,
        model_name: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        verbose: bool = False,
    ):
        super().__init__((host, port), _Handler)
        self.judge, self.model_name = judge, model_name
        self.max_request_bytes, self.verbose = max_request_bytes, verbose
        self.created = int(time.time())
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> JudgeHTTPServer:
        """Serve in a background thread (for tests and notebooks); :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.serve_forever, name="judge-server", daemon=True)
        self._thread.start()
        return self

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
):
    """Load the model and serve it; returns the running :class:`JudgeHTTPServer` (``background=True``)."""
    judge = JudgeModel(
        model_path, dtype=dtype, device=device, chat_template=chat_template, max_new_tokens=max_new_tokens
    )
    server = JudgeHTTPServer(judge, model_name or Path(model_path).name, host, port, max_request_bytes, verbose)
    if background:
        return server.start()
    return server
