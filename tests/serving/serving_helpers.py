"""Run a real ``dmoerm serve`` subprocess on 127.0.0.1 (port 0: the server picks a free port and prints it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

READY = re.compile(r"dmoerm serve: ready at (http://\S+)")

RESPONSES = [
    "Paris is the capital of France.",
    "I think it is blue because of Rayleigh scattering of sunlight.",
    "Sure! Mix flour, water, salt and yeast, then bake.",
    "No idea.",
    "The waves roll in, the gulls cry out, the sea is wide and grey.",
    "84",
]


class ServerProcess:
    """``python -m dmoerm_trl.cli serve --model MODEL --port 0 ARGS...`` with its output in files."""

    def __init__(self, model: str, *args: str, log_dir: Path, env: dict | None = None, name: str = "server"):
        self.command = [sys.executable, "-m", "dmoerm_trl.cli", "serve", "--model", str(model), "--port", "0", *args]
        self.stdout_path = Path(log_dir) / f"{name}.out"
        self.stderr_path = Path(log_dir) / f"{name}.err"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.url: str | None = None

    def start(self) -> ServerProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=err, env=self.env)
        return self

    def wait_ready(self, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = READY.search(self.stdout_path.read_text(errors="replace"))
            if match:
                self.url = match.group(1)
                return self.url
            if self.process.poll() is not None:
                raise RuntimeError(f"dmoerm serve exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"dmoerm serve not ready after {timeout} s:\n{self.output()[-3000:]}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM, then wait for the exit code (killed after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def render(tokenizer, user: str, assistant: str = "ok") -> str:
    """A one-turn chat as text, through the tokenizer's chat template."""
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def chat_texts(tokenizer, prompts, responses=RESPONSES):
    """(full chat-templated texts, prompt texts with the assistant opener, message lists): every prompt x response."""
    texts, prompt_texts, conversations = [], [], []
    for prompt in prompts:
        opener = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        for response in responses:
            messages = list(prompt) + [{"role": "assistant", "content": response}]
            conversations.append(messages)
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
            prompt_texts.append(opener)
    return texts, prompt_texts, conversations


def post(url, path, body, headers=None, timeout=120.0):
    if isinstance(body, bytes):
        return httpx.post(
            url + path, content=body, headers={"Content-Type": "application/json", **(headers or {})}, timeout=timeout
        )
    return httpx.post(url + path, json=body, headers=headers, timeout=timeout)


def metrics(url, headers=None):
    return httpx.get(url + "/metrics", headers=headers, timeout=60).json()


@torch.no_grad()
def routed_on_prompts(model, tokenizer, texts, prompt_texts):
    """In process: route each prompt alone, then score the full text under that category (categories= bypass)."""
    prompt_batch = tokenizer(prompt_texts, return_tensors="pt", padding=True, add_special_tokens=False)
    categories = model.route(prompt_batch["input_ids"], prompt_batch["attention_mask"]).argmax(-1).tolist()
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], categories=categories)
    return out.logits[:, 0].tolist(), categories
