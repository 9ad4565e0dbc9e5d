"""A scripted OpenAI-compatible judge for tests and benchmarks: real HTTP on 127.0.0.1, answers from known verdicts,
a fixed latency, and faults injected on demand. It is not a model; it is how the labeler's reliability is proven.

Faults (per request, chosen deterministically from the request body and how often it was seen, so a run with
faults meets the same faults whatever the arrival order; ``max_faults_per_request`` bounds them so every request
eventually succeeds):

    rate_limit    429 with ``Retry-After`` (and ``retry-after-ms``) headers
    server_error  500 with an OpenAI-style error body
    slow          the answer comes after ``slow_seconds`` (set it past the client's timeout)
    truncated     headers promise more bytes than are sent, then the connection closes
    garbage       200 with a body that is not JSON
    empty         200 with a JSON body without choices
    drop          the connection closes without any answer

Example:
    >>> from dmoerm_trl.labeling.scripted_judge_server import ScriptedJudgeServer
    >>> import openai
    >>> with ScriptedJudgeServer(lambda body: "1", latency=0.0) as server:
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    ...     answer = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "?"}])
    >>> answer.choices[0].message.content
    '1'
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping

FAULT_KINDS = ("rate_limit", "server_error", "slow", "truncated", "garbage", "empty", "drop")


class VerdictJudge:
    """Answers judge prompts (the built-in templates) from known per-capability scores of each response text.

    ``scores[response_text][capability] -> float``; the higher score wins, equal scores give an undecided answer.
    ``position_biased`` capabilities are always answered "1" (so the swap filter must reject them);
    ``undecided`` capabilities get an answer that names no response.

    Example:
        >>> judge = VerdictJudge({"good": {"logic": 2.0}, "bad": {"logic": 1.0}})
        >>> judge.answer_text("Capability: logic\\n[Response 1]\\nbad\\n[End of Response 1]\\n"
        ...                   "[Response 2]\\ngood\\n[End of Response 2]")
        '2'
    """

    def __init__(
        self,
        scores: Mapping[str, Mapping[str, float]],
        *,
        position_biased=(),
        undecided=(),
        capability_names: Mapping[str, str] | None = None,
        style: str = "digit",
    ):
        self.scores = scores
        self.position_biased, self.undecided = set(position_biased), set(undecided)
        self.names = dict(capability_names or {})  # display name (e.g. Chinese) -> key
        self.style = style

    def _key(self, name: str) -> str:
        name = name.strip()
        return self.names.get(name, name.replace(" ", "_"))

    def _winner(self, capability: str, first: str, second: str) -> int | None:
        if capability in self.position_biased:
            return 1
        if capability in self.undecided:
            return None
        a, b = self.scores[first][capability], self.scores[second][capability]
        return None if a == b else (1 if a > b else 2)

    def _say(self, winner: int | None) -> str:
        if winner is None:
            return "I cannot decide."
        return {"digit": str(winner), "sentence": f"Response {winner} is better.", "zh": f"回复{winner}更好。"}[
            self.style
        ]

    def answer_text(self, user: str) -> str:
        en = re.search(
            r"\[Response 1\]\n(.*?)\n\[End of Response 1\].*?\[Response 2\]\n(.*?)\n\[End of Response 2\]",
            user,
            re.DOTALL,
        )
        zh = re.search(r"【回复1】：(.*?)\n【回复2】：(.*?)(?:\n请只输出|$)", user, re.DOTALL)
        first, second = (en or zh).groups()
        single = re.search(r"^Capability: ([^(\n]+?)(?: \(.*)?$", user, re.MULTILINE) or re.search(
            r"在【(.+?)】方面", user
        )
        if single:
            return self._say(self._winner(self._key(single.group(1)), first, second))
        listed = user.split("[Conversation]")[0] if en else user.split("【提问】")[0]
        verdicts = {}
        for name in re.findall(r"^- ([^:\n]+)", listed, re.MULTILINE):
            winner = self._winner(self._key(name), first, second)
            verdicts[name.strip()] = winner if winner is not None else "tie"
        return json.dumps(verdicts, ensure_ascii=False)

    def __call__(self, body: Mapping) -> str:
        return self.answer_text(body["messages"][-1]["content"])


class ScriptedJudgeServer:
    """The server. ``answer(body) -> str`` gives the content of each successful answer."""

    def __init__(
        self,
        answer: Callable[[Mapping], str] | None = None,
        *,
        latency: float = 0.0,
        faults: Mapping[str, float] | None = None,
        max_faults_per_request: int = 2,
        fault_seed: int = 0,
        slow_seconds: float = 2.0,
        retry_after_headers: Mapping[str, str] | None = None,
        require_api_key: str | None = None,
        reject_response_format: bool = False,
        model: str = "scripted-judge",
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        unknown = set(faults or {}) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"Unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.answer = answer or (lambda body: "1")
        self.latency, self.faults = latency, dict(faults or {})
        self.max_faults_per_request, self.fault_seed, self.slow_seconds = (
            max_faults_per_request,
            fault_seed,
            slow_seconds,
        )
        self.retry_after_headers = dict(retry_after_headers or {"retry-after-ms": "20", "retry-after": "0"})
        self.require_api_key, self.reject_response_format = require_api_key, reject_response_format
        self.model, self.host, self.port = model, host, port
        self.forced_faults: list[str] = []  # consumed first-in first-out by the next requests
        self.counts: Counter = Counter()  # "requests", "answered", and each fault kind
        self.seen: Counter = Counter()  # request-body hash -> times received
        self.log: list[tuple[float, str, str]] = []  # (monotonic time, outcome, body hash)
        self.auth_headers: Counter = Counter()
        self.in_flight = 0  # chat requests being handled now
        self.max_in_flight = 0  # the most at any moment (to check a client's concurrency bound)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._handlers: set[asyncio.Task] = set()

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ScriptedJudgeServer:
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, backlog=512)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="scripted-judge", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown():
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            asyncio.get_running_loop().stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- HTTP --------------------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line.strip():
                    break
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                if not await self._respond(method, path.split("?")[0], headers, body, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    @staticmethod
    async def _send(
        writer,
        status: int,
        payload,
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
        declared_length: int | None = None,
    ) -> None:
        data = raw if raw is not None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        reasons = {
            200: "OK",
            400: "Bad Request",
            401: "Unauthorized",
            404: "Not Found",
            429: "Too Many Requests",
            500: "Internal Server Error",
        }
        lines = [
            f"HTTP/1.1 {status} {reasons.get(status, 'Status')}",
            "Content-Type: application/json",
            f"Content-Length: {declared_length if declared_length is not None else len(data)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        await writer.drain()

    @staticmethod
    def _error(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}

    def _pick_fault(self, digest: str, seen_before: int) -> str | None:
        with self._lock:
            if self.forced_faults:
                return self.forced_faults.pop(0)
        if not self.faults or seen_before >= self.max_faults_per_request:
            return None
        draw = int(hashlib.sha256(f"{self.fault_seed}:{digest}:{seen_before}".encode()).hexdigest()[:8], 16) / 2**32
        for kind, probability in self.faults.items():
            if draw < probability:
                return kind
            draw -= probability
        return None

    def _record(self, outcome: str, digest: str) -> None:
        with self._lock:
            self.counts[outcome] += 1
            self.log.append((time.monotonic(), outcome, digest))

    async def _respond(self, method: str, path: str, headers, body: bytes, writer) -> bool:
        if method == "GET" and path == "/v1/models":
            await self._send(
                writer,
                200,
                {
                    "object": "list",
                    "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "scripted"}],
                },
            )
            return True
        if method != "POST" or path != "/v1/chat/completions":
            await self._send(writer, 404, self._error(f"No route {method} {path}", "invalid_request_error"))
            return True
        self.in_flight += 1  # only touched on the server's event loop thread
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat(headers, body, writer)
        finally:
            self.in_flight -= 1

    async def _chat(self, headers, body: bytes, writer) -> bool:
        digest = hashlib.sha256(body).hexdigest()[:16]
        with self._lock:
            self.counts["requests"] += 1
            seen_before = self.seen[digest]
            self.seen[digest] += 1
            self.auth_headers[headers.get("authorization", "")] += 1
        if self.require_api_key is not None and headers.get("authorization") != f"Bearer {self.require_api_key}":
            self._record("unauthorized", digest)
            given = headers.get("authorization", "").removeprefix("Bearer ")
            await self._send(
                writer,
                401,
                self._error(f"Incorrect API key provided: {given}.", "invalid_request_error", code="invalid_api_key"),
            )
            return True
        request = json.loads(body)
        if self.reject_response_format and request.get("response_format"):
            self._record("rejected_response_format", digest)
            await self._send(
                writer,
                400,
                self._error(
                    "response_format is not supported by this server.",
                    "invalid_request_error",
                    param="response_format",
                ),
            )
            return True
        fault = self._pick_fault(digest, seen_before)
        if fault is not None:
            self._record(fault, digest)
        if fault == "rate_limit":
            await self._send(
                writer, 429, self._error("Rate limit reached.", "rate_limit_error"), headers=self.retry_after_headers
            )
            return True
        if fault == "server_error":
            await self._send(writer, 500, self._error("The server had an error.", "server_error"))
            return True
        if fault == "drop":
            return False
        if fault == "garbage":
            await self._send(writer, 200, None, raw=b"<html>\x00 not json {{{")
            return True
        if fault == "empty":
            await self._send(writer, 200, {"id": "x", "object": "chat.completion", "choices": []})
            return True
        await asyncio.sleep(self.slow_seconds if fault == "slow" else self.latency)
        content = self.answer(request)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_chars // 4 + 1,
                "completion_tokens": len(content) // 4 + 1,
                "total_tokens": prompt_chars // 4 + len(content) // 4 + 2,
            },
        }
        if fault == "truncated":
            data = json.dumps(payload).encode("utf-8")
            await self._send(writer, 200, None, raw=data[: len(data) // 2], declared_length=len(data))
            return False
        if fault != "slow":
            self._record("answered", digest)
        await self._send(writer, 200, payload)
        return True


def main(argv: list[str] | None = None) -> None:
    """``python -m dmoerm_trl.labeling.scripted_judge_server --latency 0.2``: serve constant "1" answers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--answer", default="1", help="The content of every answer.")
    args = parser.parse_args(argv)
    server = ScriptedJudgeServer(lambda body: args.answer, latency=args.latency, port=args.port).start()
    print(f"READY {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
