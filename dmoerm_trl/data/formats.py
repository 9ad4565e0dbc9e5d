"""The record formats: mtmc-rlhf ranked lists and TRL's preference formats (conversational, text, implicit prompt,
``tools``/``chat_template_kwargs``), checked field by field into pairs; the pairs' ``datasets.Features``."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .categories import CategorySpec, load_category_spec
from .errors import DataValidationError, LoadReport

MESSAGE_ROLES = ("system", "user", "assistant", "tool")


def pair_features(with_capability: bool = False, text: bool = False, tools: bool = False):
    """The ``datasets.Features`` of a pairs dataset (TRL's conversational format, or its standard text format with
    ``text=True``, + ``category`` + ``pair_id``; ``tools`` adds TRL's ``tools`` column as JSON text)."""
    from datasets import Features, List, Value

    message = Value("string") if text else List({"role": Value("string"), "content": Value("string")})
    columns = {
        "prompt": message,
        "chosen": message,
        "rejected": message,
        "category": Value("string"),
        "pair_id": Value("string"),
    }
    if with_capability:
        columns["capability"] = Value("string")
    if tools:
        columns["tools"] = Value("string")
    return Features(columns)


def is_text_pairs(dataset) -> bool:
    """Whether a pairs dataset is in TRL's standard (text) format rather than the conversational one.

    Example:
        >>> import datasets
        >>> is_text_pairs(datasets.Dataset.from_dict({"prompt": ["Hi"], "chosen": [" Hello"], "rejected": [" No"]}))
        True
    """
    from datasets import Value

    feature = dataset.features.get("prompt", dataset.features.get("chosen"))
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _detect_format(record: Mapping) -> str | None:
    if "src" in record and "response" in record:
        return "mtmc"
    if "chosen" in record and "rejected" in record:
        return "trl"
    return None


class _RecordChecker:
    """Field checks that raise DataValidationError with the record's location."""

    def __init__(self, source: str, location: str):
        self.source, self.location = source, location

    def fail(self, field: str | None, problem: str, fix: str):
        raise DataValidationError(self.source, self.location, field, problem, fix)

    def string_list(self, record: Mapping, name: str, min_length: int = 0) -> list[str]:
        value = record.get(name)
        if value is None:
            self.fail(name, "missing", f"add '{name}' (a list of strings)")
        if isinstance(value, str) or not isinstance(value, Sequence):
            self.fail(name, f"expected a list of strings, got {type(value).__name__}", f"make '{name}' a JSON list")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{name}[{index}]", f"expected a string, got {type(item).__name__}", "use text strings")
        if len(value) < min_length:
            self.fail(name, f"has {len(value)} items, needs at least {min_length}", f"add items to '{name}'")
        return list(value)

    def messages(self, value: Any, name: str) -> list[dict[str, str]]:
        if isinstance(value, str) or not isinstance(value, Sequence):
            self.fail(name, f"expected a list of messages, got {type(value).__name__}", "use [{role, content}, ...]")
        messages = []
        for index, message in enumerate(value):
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                self.fail(
                    f"{name}[{index}]", "not a {'role', 'content'} message", "give each message role and content"
                )
            role, content = message["role"], message["content"]
            if role not in MESSAGE_ROLES:
                self.fail(f"{name}[{index}].role", f"unknown role {role!r}", f"use one of {', '.join(MESSAGE_ROLES)}")
            if not isinstance(content, str):
                self.fail(
                    f"{name}[{index}].content",
                    f"expected a string, got {type(content).__name__}",
                    "flatten multi-part content into one string",
                )
            messages.append({"role": role, "content": content})
        return messages


def _resolve_category(check: _RecordChecker, value: Any, name: str, spec: CategorySpec | None, strict: bool) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        check.fail(name, f"expected a string, got {type(value).__name__}", "use the category name as a string")
    value = value.strip()
    if spec is None:  # no category set given: map the paper's Chinese names, keep anything else as is
        return _PAPER_SPEC.resolve(value) or value
    key = spec.resolve(value)
    if key is None and strict:
        check.fail(
            name,
            f"unknown category {value!r} (known: {', '.join(spec.categories)})",
            "add it (or an alias) to your category set YAML, or pass --skip-invalid to skip such records",
        )
    return key or ""


def _mtmc_pairs(check: _RecordChecker, record: Mapping, spec, lower_rank_is_better: bool, report: LoadReport):
    src = check.string_list(record, "src", min_length=1)
    if record.get("tgt") is None and len(src) == 1:
        tgt = []
    else:
        tgt = check.string_list(record, "tgt")
    if len(tgt) != len(src) - 1:
        check.fail(
            "tgt",
            f"has {len(tgt)} assistant turns for {len(src)} user turns (needs len(src) - 1 = {len(src) - 1})",
            "give one earlier assistant turn between each pair of user turns",
        )
    responses = check.string_list(record, "response", min_length=1)
    ranks = record.get("rank")
    if isinstance(ranks, str) or not isinstance(ranks, Sequence):
        check.fail("rank", f"expected a list of ints, got {type(ranks).__name__}", "give one int rank per response")
    ranks = list(ranks)
    if len(ranks) != len(responses):
        check.fail("rank", f"has {len(ranks)} ranks for {len(responses)} responses", "give one rank per response")
    for index, rank in enumerate(ranks):
        is_number = isinstance(rank, (int, float)) and not isinstance(rank, bool)
        if not is_number or not math.isfinite(rank) or rank != int(rank):
            check.fail(f"rank[{index}]", f"expected an integer, got {rank!r}", "use integer ranks (NaN is no rank)")
    category = _resolve_category(check, record.get("label"), "label", spec, strict=spec is not None)

    prompt = []
    for turn, user_text in enumerate(src):
        prompt.append({"role": "user", "content": user_text})
        if turn < len(tgt):
            prompt.append({"role": "assistant", "content": tgt[turn]})
    pairs = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if ranks[i] == ranks[j]:
                report.tied_pairs += 1
                continue
            i_better = (ranks[i] < ranks[j]) == lower_rank_is_better
            better, worse = (i, j) if i_better else (j, i)
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": responses[better]}],
                    "rejected": [{"role": "assistant", "content": responses[worse]}],
                    "category": category,
                }
            )
    return pairs


def extract_text_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """``(prompt, chosen, rejected)`` of an implicit-prompt text pair, split as TRL's ``extract_prompt`` does: the
    prompt is the longest common character prefix, less a trailing space (which starts the answers).

    Example:
        >>> extract_text_prompt("Human: Hi. Assistant: Hello!", "Human: Hi. Assistant: Go away.")
        ('Human: Hi. Assistant:', ' Hello!', ' Go away.')
    """
    shared = 0
    for shared in range(min(len(chosen), len(rejected))):
        if chosen[shared] != rejected[shared]:
            if shared and chosen[shared - 1] == " ":  # the space before the answers belongs to them
                shared -= 1
            break
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _template_columns(check: _RecordChecker, record: Mapping, conversational: bool) -> dict[str, Any]:
    """The ``tools`` (kept as JSON text, which TRL reads) and ``chat_template_kwargs`` (a mapping) of a record; both
    only mean something for conversational pairs (the chat template), so a text pair with them is malformed."""
    columns: dict[str, Any] = {}
    tools, kwargs = record.get("tools"), record.get("chat_template_kwargs")
    if tools is not None and tools != "" and tools != []:
        if isinstance(tools, str):
            try:
                tools = json.loads(tools)
            except json.JSONDecodeError as error:
                check.fail("tools", f"not valid JSON ({error.msg})", "give a list of tool (function) schemas")
        if not isinstance(tools, list) or not all(isinstance(tool, Mapping) for tool in tools):
            check.fail("tools", f"expected a list of tool schemas, got {type(tools).__name__}", "give a JSON list")
        columns["tools"] = json.dumps(tools, ensure_ascii=False)
    if kwargs is not None and kwargs != {}:
        if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
            check.fail(
                "chat_template_kwargs",
                f"expected a mapping, got {type(kwargs).__name__}",
                'give keyword arguments of apply_chat_template, e.g. {"enable_thinking": false}',
            )
        columns["chat_template_kwargs"] = dict(kwargs)
    if columns and not conversational:
        check.fail(
            next(iter(columns)),
            "only applies to conversational pairs (the chat template), but this pair is text "
            "(TRL ignores it for text)",
            "store prompt/chosen/rejected as message lists, or drop the field",
        )
    return columns


def _trl_pair(check: _RecordChecker, record: Mapping, spec, text_pairs: str = "text"):
    chosen, rejected = record.get("chosen"), record.get("rejected")
    prompt = record.get("prompt")
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            check.fail(name, "missing", f"add '{name}'")
    text = isinstance(chosen, str) or isinstance(rejected, str)
    if text:  # TRL's standard (text) format: kept as text, tokenized without a chat template
        for name, value in (("chosen", chosen), ("rejected", rejected), ("prompt", prompt)):
            if value is not None and not isinstance(value, str):
                check.fail(
                    name,
                    f"'{name}' is {type(value).__name__} but the pair is text",
                    "use text for prompt, chosen and rejected, or messages for all three",
                )
        if prompt is None:  # implicit prompt: the shared text prefix of chosen and rejected (TRL's extract_prompt)
            prompt, chosen, rejected = extract_text_prompt(chosen, rejected)
            if not prompt:
                check.fail(
                    "prompt",
                    "missing, and 'chosen'/'rejected' share no text prefix to take as the prompt",
                    "add a 'prompt' column, or include the prompt at the start of both chosen and rejected",
                )
        if not prompt:
            check.fail("prompt", "empty: no text before the answers", "give the prompt text")
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not value:
                check.fail(name, "empty answer", f"give '{name}' a non-empty answer")
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if text_pairs == "chat":  # RewardBench's convention: the prompt as a user turn, each answer as the reply
            pair = {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
            text = False
    else:
        pair = _message_prompt(check, prompt, chosen, rejected)
    pair.update(_template_columns(check, record, conversational=not text))
    pair["category"] = _resolve_category(check, record.get("category"), "category", spec, strict=spec is not None)
    return _with_capability(check, record, spec, pair)


def _message_prompt(check: _RecordChecker, prompt, chosen, rejected) -> dict[str, list]:
    if prompt is None:  # implicit prompt: the shared conversation prefix of chosen and rejected
        chosen_messages, rejected_messages = check.messages(chosen, "chosen"), check.messages(rejected, "rejected")
        shared = 0
        while (
            shared < min(len(chosen_messages), len(rejected_messages)) - 1
            and chosen_messages[shared] == rejected_messages[shared]
        ):
            shared += 1
        prompt_messages = chosen_messages[:shared]
        chosen_messages, rejected_messages = chosen_messages[shared:], rejected_messages[shared:]
    elif isinstance(prompt, str):
        check.fail(
            "prompt",
            "the prompt is text but 'chosen'/'rejected' are messages",
            "use text for prompt, chosen and rejected, or messages for all three",
        )
    else:
        prompt_messages = check.messages(prompt, "prompt")
        chosen_messages, rejected_messages = check.messages(chosen, "chosen"), check.messages(rejected, "rejected")
    if not prompt_messages:
        check.fail("prompt", "empty: no conversation before the answers", "give at least one user message")
    for name, messages in (("chosen", chosen_messages), ("rejected", rejected_messages)):
        if not messages or messages[-1]["role"] != "assistant":
            check.fail(name, "does not end with an assistant message", f"make '{name}' the assistant's answer")
    return {"prompt": prompt_messages, "chosen": chosen_messages, "rejected": rejected_messages}


def _with_capability(check: _RecordChecker, record: Mapping, spec, pair: dict) -> dict:
    if "capability" in record:
        capability = record["capability"]
        if not isinstance(capability, str) or not capability:
            check.fail("capability", f"expected a non-empty string, got {capability!r}", "name the capability")
        if spec is not None and pair["category"] and capability not in spec.categories.get(pair["category"], []):
            check.fail(
                "capability",
                f"{capability!r} is not a capability of category {pair['category']!r}",
                f"use one of {spec.categories.get(pair['category'])} or fix the category set",
            )
        pair["capability"] = capability
    return pair


def conversation_key(prompt_messages: list[dict[str, str]]) -> str:
    """A stable id of a conversation (its prompt messages): pairs of one ranked list share it."""
    payload = json.dumps(list(prompt_messages), ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def _content_hash(pair: Mapping) -> str:
    payload = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


_PAPER_SPEC = load_category_spec("paper")
