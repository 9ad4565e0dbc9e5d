"""The scoring engine behind ``dmoerm serve``: tokenize and check requests, score batches of token ids.

:class:`RewardEngine` wraps a loaded reward model (a DMoERM or any ``AutoModelForSequenceClassification`` reward
model) and its tokenizer. The server tokenizes each request on arrival (:meth:`RewardEngine.encode_texts`,
:meth:`RewardEngine.encode_conversations`), so malformed or over-long inputs are refused before they are queued, and
a :class:`~dmoerm_trl.serving.batching.DynamicBatcher` hands batches of :class:`ScoreItem` to
:meth:`RewardEngine.score_items` in its worker thread.

The same texts give the same rewards as in-process scoring:

- text (``/get_reward`` ``query``): tokenized exactly as :func:`dmoerm_trl.scoring.score_conversations` does
  (``model.compute_rewards``), and as TRL's GRPO/RLOO and OpenRLHF do (no special tokens added, except the
  ``[CLS]``/``[SEP]`` of an encoder DMoERM);
- conversations (``/v1/rewards``): rendered with the tokenizer's chat template, as ``compute_rewards`` and TRL do.

Routing: the model routes each sequence itself (as in process), unless the caller gives the category
(``categories``) or the prompt (``/get_reward``'s ``prompts``). With a prompt, the router reads the prompt's tokens
only: inside the model's own pass (``prompt_mask=``) when the model takes one and the prompt's tokens begin the text;
otherwise the prompt is routed alone and the full text is scored under its category (the ``categories=`` bypass). For
a causal decoder both are the router's view of the prompt positions, which do not depend on the response.

Example:
    >>> from dmoerm_trl.serving.engine import RewardEngine                       # doctest: +SKIP
    >>> engine = RewardEngine.from_pretrained("./my-dmoerm")                     # doctest: +SKIP
    >>> items = engine.encode_texts(["<|im_start|>user\\nHi<|im_end|>\\n..."])      # doctest: +SKIP
    >>> engine.score_items(items)[0]["reward"]                                   # doctest: +SKIP
    0.42
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["InputError", "RewardEngine", "ScoreItem"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class InputError(ValueError):
    """A request item the engine cannot score (names the field and index); the server answers HTTP 400."""


@dataclasses.dataclass
class ScoreItem:
    """One sequence to score: its token ids, an optional category (router bypass) or prompt token ids to route on."""

    input_ids: list[int]
    category: str | None = None
    prompt_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


class RewardEngine:
    """Tokenize, check and score requests for one reward model (DMoERM or a plain sequence-classification RM).

    Args:
        model: the reward model (``logits`` of shape ``(B, 1)``); put in eval mode here.
        tokenizer: its tokenizer (a pad token is set from EOS when missing).
        max_length: longest accepted sequence in tokens (default: the model's ``max_position_embeddings``).
        model_id: the name ``/health`` reports (default: the model folder's name).
    """

    def __init__(self, model, tokenizer, max_length: int | None = None, model_id: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        config = model.config
        self.is_dmoerm = getattr(config, "model_type", None) == "dmoerm"
        self.categories: list[str] = list(config.category_names) if self.is_dmoerm else []
        self.capabilities: dict[str, list[str]] = (
            {name: list(config.categories[name]) for name in self.categories} if self.is_dmoerm else {}
        )
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError("the tokenizer has neither a pad nor an EOS token; add a pad token to it")
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
        self.pad_token_id = int(tokenizer.pad_token_id)
        # As model.compute_rewards: an encoder DMoERM (pooling "first") needs its [CLS]; decoders get the text as is.
        self.add_special_tokens = self.is_dmoerm and getattr(config, "pooling", None) == "first"
        limit = None
        for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, attribute, None)
            if isinstance(value, int) and value > 0:
                limit = value
                break
        if max_length is not None and limit is not None and max_length > limit:
            raise ValueError(f"--max-length {max_length} exceeds what the model accepts ({limit})")
        self.max_length = max_length or limit
        # A model that routes on the prompt inside its pass takes ``prompt_mask=``; one with a recorded chat-template
        # assistant opener routes on the prompt by itself and refuses texts without that opener.
        self._takes_prompt_mask = self.is_dmoerm and "prompt_mask" in inspect.signature(model.forward).parameters
        self.assistant_opener: list[int] = list(getattr(config, "assistant_opener_ids", None) or [])
        path = getattr(config, "_name_or_path", "") or ""
        self.model_id = model_id or os.path.basename(path.rstrip("/")) or type(model).__name__
        try:
            parameter = next(model.parameters())
            self.device, self.dtype = parameter.device, parameter.dtype
        except StopIteration:
            self.device, self.dtype = torch.device("cpu"), torch.float32

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | None = None,
        dtype: str = "float32",
        max_length: int | None = None,
        model_id: str | None = None,
    ) -> RewardEngine:
        """Load a saved DMoERM or any sequence-classification reward model folder (see ``load_reward_model``).

        Example:
            >>> engine = RewardEngine.from_pretrained("./my-dmoerm", dtype="bfloat16")  # doctest: +SKIP
        """
        from ..evaluation import load_reward_model

        if dtype not in ("auto", *DTYPES):
            raise ValueError(f"--dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
        model, tokenizer = load_reward_model(path, device=device)
        if dtype != "auto":
            model = model.to(DTYPES[dtype])
        return cls(model, tokenizer, max_length=max_length, model_id=model_id)

    # ------------------------------------------------------------------------------------------ request side
    def info(self) -> dict:
        """What ``/health`` reports about the model."""
        return {
            "model": self.model_id,
            "model_type": "dmoerm" if self.is_dmoerm else getattr(self.model.config, "model_type", None),
            "categories": self.categories,
            "capabilities": self.capabilities,
            "max_length": self.max_length,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }

    def check_category(self, category, where: str) -> str | None:
        if category is None:
            return None
        if not self.is_dmoerm:
            raise InputError(f"{where}: this reward model has no categories (it is not a DMoERM); drop `categories`")
        if not isinstance(category, str) or category not in self.categories:
            raise InputError(f"{where}: unknown category {category!r}; this model has {self.categories}")
        return category

    def _encode(self, texts: Sequence[str], field: str) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), add_special_tokens=self.add_special_tokens)["input_ids"]
        for index, ids in enumerate(encoded):
            if not ids:
                raise InputError(f"{field}[{index}]: the text is empty after tokenization")
            if self.max_length is not None and len(ids) > self.max_length:
                raise InputError(
                    f"{field}[{index}]: {len(ids)} tokens, more than this server accepts ({self.max_length}, "
                    "--max-length); shorten the text"
                )
        return encoded

    def encode_texts(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[ScoreItem]:
        """Full texts (and optional prompt texts to route on) to items; raises :class:`InputError` naming the item."""
        items = [ScoreItem(ids) for ids in self._encode(texts, "query")]
        if prompts is not None and self.is_dmoerm:
            for item, ids in zip(items, self._encode(prompts, "prompts")):
                item.prompt_ids = ids
        else:
            self._check_prompt_boundary(items, "query")
        return items

    def _check_prompt_boundary(self, items: Sequence[ScoreItem], field: str) -> None:
        """Items the model routes itself must show where their prompt ends (its chat template's assistant opener)."""
        if not self.assistant_opener:
            return
        opener, n = self.assistant_opener, len(self.assistant_opener)
        for index, item in enumerate(items):
            ids = item.input_ids
            if item.category is None and not any(ids[k : k + n] == opener for k in range(len(ids) - n + 1)):
                raise InputError(
                    f"{field}[{index}]: the text has no assistant-turn opener "
                    f"({self.tokenizer.decode(opener)!r}), so the router cannot tell its prompt from its response; "
                    "render it with the model's chat template, or send `prompts` (or `categories` on /v1/rewards)"
                )

    def render(self, messages: list[dict], where: str) -> str:
        """A conversation's text through the tokenizer's chat template (as ``compute_rewards`` and TRL render it)."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise InputError(
                f"{where}: the model's tokenizer has no chat template; send rendered texts to /get_reward instead"
            )
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as err:  # noqa: BLE001 - a template may raise on an unsupported role order (jinja2 exceptions)
            raise InputError(f"{where}: the chat template refused this conversation: {err}") from None

    def encode_conversations(self, conversations: Sequence, categories: Sequence | None = None) -> list[ScoreItem]:
        """Message lists (or already rendered strings) to items, with optional per-item categories."""
        texts = [
            c if isinstance(c, str) else self.render(c, f"conversations[{i}]") for i, c in enumerate(conversations)
        ]
        items = [ScoreItem(ids) for ids in self._encode(texts, "conversations")]
        if categories is not None:
            for index, (item, category) in enumerate(zip(items, categories)):
                item.category = self.check_category(category, f"categories[{index}]")
        self._check_prompt_boundary(items, "conversations")
        return items

    # ------------------------------------------------------------------------------------------- model side
    def _pad(self, sequences: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        from ..data.batching import pad_sequences

        input_ids, attention_mask = pad_sequences(sequences, self.pad_token_id)  # right, as compute_rewards and TRL
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _route_prompts(self, sequences: Sequence[list[int]]) -> torch.Tensor:
        """``(N, C)`` router probabilities of prompts given alone (every real token is prompt)."""
        prompt_ids, prompt_mask = self._pad(sequences)
        kwargs = {"prompt_mask": prompt_mask} if self._takes_prompt_mask else {}
        return self.model.route(prompt_ids, prompt_mask, **kwargs).float().softmax(-1)

    def _forward(self, items: Sequence[ScoreItem], categories=None, prompt_lengths=None):
        input_ids, attention_mask = self._pad([item.input_ids for item in items])
        kwargs = {}
        if categories is not None:
            kwargs["categories"] = categories
        if prompt_lengths is not None:  # the router reads each row's first prompt_lengths[row] tokens
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            lengths = torch.tensor(prompt_lengths, device=input_ids.device)
            kwargs["prompt_mask"] = (positions.unsqueeze(0) < lengths.unsqueeze(1)).long()
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def score_items(self, items: Sequence[ScoreItem]) -> list[dict]:
        """Score a batch: one ``{reward, category, router_prob, capability_rewards}`` dict per item.

        For a plain reward model ``category``/``router_prob`` are ``None`` and ``capability_rewards`` is empty.
        Runs in the batcher's worker thread (one batch at a time). Rows are grouped by how they are routed: by the
        model itself, on a given prompt (inside the same pass when the model takes ``prompt_mask=`` and the prompt's
        tokens begin the text, else the prompt is routed alone and the text scored under its category), or with a
        given category; one forward pass per group.
        """
        if not items:
            return []
        if not self.is_dmoerm:
            logits = self._forward(items).logits
            return [
                {"reward": float(value), "category": None, "router_prob": None, "capability_rewards": {}}
                for value in logits[:, 0].float().tolist()
            ]
        results: list[dict | None] = [None] * len(items)
        categories: list[str | None] = [item.category for item in items]
        router_probs: list[float | None] = [None] * len(items)
        in_pass, alone, by_model = [], [], []
        for i, item in enumerate(items):
            if item.category is not None:
                continue
            if item.prompt_ids is None:
                by_model.append(i)
            elif self._takes_prompt_mask and item.input_ids[: len(item.prompt_ids)] == item.prompt_ids:
                in_pass.append(i)
            else:
                alone.append(i)
        if alone:  # route the prompt alone, then score the full text under that category
            probs = self._route_prompts([items[i].prompt_ids for i in alone])
            for row, i in enumerate(alone):
                category_id = int(probs[row].argmax())
                categories[i] = self.categories[category_id]
                router_probs[i] = float(probs[row, category_id])
        given = [i for i, category in enumerate(categories) if category is not None]
        groups = (
            (by_model, {}),
            (in_pass, {"prompt_lengths": [len(items[i].prompt_ids) for i in in_pass]}),
            (given, {"categories": [categories[i] for i in given]}),
        )
        for rows, kwargs in groups:
            if not rows:
                continue
            out = self._forward([items[i] for i in rows], **kwargs)
            rewards = out.logits[:, 0].float().tolist()
            capability_rewards = out.capability_rewards.float().tolist()
            category_ids = out.category_ids.tolist()
            probs = out.router_probs.float() if out.router_probs is not None else None
            for row, i in enumerate(rows):
                category = self.categories[int(category_ids[row])]
                if probs is not None:
                    router_probs[i] = float(probs[row, int(category_ids[row])])
                results[i] = {
                    "reward": rewards[row],
                    "category": category,
                    "router_prob": router_probs[i],
                    "capability_rewards": {
                        name: capability_rewards[row][j] for j, name in enumerate(self.capabilities[category])
                    },
                }
        return results

    def score_texts(self, texts: Sequence[str], prompts: Sequence[str] | None = None, batch_size: int = 32):
        """In-process scoring with the server's tokenization: rewards for full texts (routing on ``prompts``).

        Example:
            >>> engine.score_texts(["<|im_start|>user\\nHi<|im_end|>..."])  # doctest: +SKIP
            [0.42]
        """
        items = self.encode_texts(texts, prompts)
        rewards = []
        for start in range(0, len(items), batch_size):
            rewards.extend(r["reward"] for r in self.score_items(items[start : start + batch_size]))
        return rewards
