"""The model behind ``dmoerm serve-judge``: a local causal LM answering chat messages, several requests per
``generate`` call.

A request becomes a :class:`GenerationItem` (:meth:`JudgeModel.prepare`: chat template, token ids, the context
check); :meth:`JudgeModel.generate_batch` answers a list of them. Items that can share a call (greedy ones; sampled
ones with equal temperature/top_p and no seed) are left-padded into one ``generate`` call; a seeded sampled item
runs alone, so its answer does not depend on what it was batched with. Each row stops on its own: at an EOS token,
at its own ``max_tokens``, or as soon as its client went away (``item.cancelled`` set by the server); the call ends
when every row has stopped. An item cancelled before its batch starts is not generated at all.

Example:
    >>> from dmoerm_trl.labeling.judge_model import JudgeModel
    >>> judge = JudgeModel("path/to/causal-lm")  # doctest: +SKIP
    >>> questions = ("1 or 2?", "Hi")
    >>> items = [judge.prepare([{"role": "user", "content": q}], max_tokens=8) for q in questions]  # doctest: +SKIP
    >>> [result.text for result in judge.generate_batch(items)]  # doctest: +SKIP
    ['1', 'Hello!']
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path


class RequestError(Exception):
    """A request the server refuses: HTTP status, message, offending parameter, error code, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class GenerationItem:
    """One chat request, tokenized: what a batch is made of. ``cancelled`` is set when its client disconnects."""

    input_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)

    def group(self) -> tuple:
        """Items with equal groups share one ``generate`` call."""
        if self.temperature <= 0:
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", id(self))
        return ("sample", self.temperature, self.top_p)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def _row_stopper(items: list[GenerationItem], prompt_length: int):
    """A stopping criterion with one verdict per row: the row's own max_tokens reached, or its client gone.

    (``generate`` keeps a row stopped once any criterion stopped it, and handles EOS itself.)"""
    import torch
    from transformers import StoppingCriteria

    class RowStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids.shape[1] - prompt_length
            done = [item.cancelled.is_set() or generated >= item.max_tokens for item in items]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return RowStop()


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
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if chat_template is not None:
            self.tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.path}: the tokenizer has no chat template. Fix: pass --chat-template FILE.jinja.")
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        try:
            self.model, loading = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=torch_dtype, use_safetensors=True, output_loading_info=True
            )
        except ValueError as error:  # e.g. a DMoERM folder: transformers lists every causal-LM config class
            if "Unrecognized configuration class" not in str(error):
                raise
            model_type = getattr(AutoConfig.from_pretrained(self.path), "model_type", "?")
            raise ValueError(
                f"{self.path} is not a causal language model (model_type {model_type!r} has no AutoModelForCausalLM "
                "class). Fix: pass a chat model saved as *ForCausalLM."
            ) from None
        missing = sorted(loading["missing_keys"])
        if missing:  # e.g. a reward model: its lm_head would be random and every answer noise
            saved_as = ", ".join(getattr(self.model.config, "architectures", None) or []) or "its checkpoint"
            raise ValueError(
                f"{self.path} is not a causal language model ({saved_as}): {len(missing)} weight(s) a judge needs are "
                f"missing and would be random (e.g. {missing[0]}). Fix: pass a chat model saved as *ForCausalLM."
            )
        self.model.to(device).eval()
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        )
        self._generate_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to call from several threads at once

    def prepare(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> GenerationItem:
        """Apply the chat template and tokenize; raises :class:`RequestError` when the prompt fills the context."""
        with self._tokenizer_lock:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            input_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.context_length is not None:
            room = self.context_length - len(input_ids)
            if room <= 0:
                raise RequestError(
                    400,
                    f"The prompt has {len(input_ids)} tokens; this model's context is "
                    f"{self.context_length}. Shorten the messages.",
                    "messages",
                    "context_length_exceeded",
                )
            max_tokens = min(max_tokens, room)
        return GenerationItem(list(input_ids), max_tokens, temperature, top_p, seed, stop)

    def generate_batch(self, items: list[GenerationItem]) -> list[GenerationResult | None]:
        """Answer ``items`` (same order); ``None`` for an item whose client went away (never generated, or stopped)."""
        results: list[GenerationResult | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(items):
            if not item.cancelled.is_set():
                groups.setdefault(item.group(), []).append(index)
        with self._generate_lock:
            for indices in groups.values():
                for index, result in zip(indices, self._generate_group([items[i] for i in indices])):
                    results[index] = result
        return results

    def generate(self, messages: list[dict], **arguments) -> tuple[str, int, int, str]:
        """One request on its own: (text, prompt tokens, completion tokens, finish reason)."""
        result = self.generate_batch([self.prepare(messages, **arguments)])[0]
        return result.text, result.prompt_tokens, result.completion_tokens, result.finish_reason

    def _generate_group(self, items: list[GenerationItem]) -> list[GenerationResult | None]:
        import torch

        if all(item.cancelled.is_set() for item in items):  # every client left while the batch was formed
            return [None] * len(items)
        from ..data.batching import pad_sequences

        length = max(item.prompt_tokens for item in items)
        # left padding: every prompt ends where generation starts
        input_ids, attention_mask = pad_sequences([item.input_ids for item in items], self.pad_id, side="left")
        first = items[0]
        kwargs = {
            "max_new_tokens": max(item.max_tokens for item in items),
            "pad_token_id": self.pad_id,
            "eos_token_id": sorted(self.eos_ids),
            "stopping_criteria": [_row_stopper(items, length)],
        }
        if first.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
        else:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with torch.no_grad():
            if first.seed is not None:
                torch.manual_seed(first.seed)
            output = self.model.generate(
                input_ids.to(self.device), attention_mask=attention_mask.to(self.device), **kwargs
            )
        results = []
        for row, item in enumerate(items):
            if item.cancelled.is_set():
                results.append(None)
                continue
            new_ids = output[row, length:].tolist()[: item.max_tokens]
            ended = next((i for i, token in enumerate(new_ids) if token in self.eos_ids), None)
            if ended is not None:
                new_ids = new_ids[: ended + 1]
            finish = "stop" if ended is not None else ("length" if len(new_ids) >= item.max_tokens else "stop")
            with self._tokenizer_lock:
                answer = self.tokenizer.decode(new_ids, skip_special_tokens=True)
            for marker in item.stop or []:
                if marker and marker in answer:
                    answer, finish = answer[: answer.index(marker)], "stop"
            results.append(GenerationResult(answer, item.prompt_tokens, len(new_ids), finish))
        return results
