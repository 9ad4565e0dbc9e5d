"""Judge prompts (English and the paper's Chinese one, overridable from a YAML file) and verdict parsing.

A template is a YAML file with ``mode`` (``per_capability`` or ``joint``), ``language``, an optional ``system``
message and a ``user`` message with ``{placeholders}``. Placeholders are replaced in one pass, so text inside a
conversation that happens to look like ``{response_2}`` is left alone; any other braces (JSON examples) are kept.

Verdicts are read leniently: an answer that names neither response, or both, is *undecided* (``None``), never an
error.

Example:
    >>> from dmoerm_trl.labeling.prompts import load_template, parse_pairwise_verdict, parse_joint_verdict
    >>> from dmoerm_trl.data import load_category_spec
    >>> template = load_template("per_capability", "zh")
    >>> messages = template.render(prompt=[{"role": "user", "content": "1+1=?"}], response_1="2", response_2="3",
    ...                            capabilities=["correctness"], spec=load_category_spec("paper"))
    >>> print(messages[-1]["content"])
    给定提问和两个回复，判断回复1和回复2在【正确性】方面哪个更好。
    【提问】：1+1=?
    【回复1】：2
    【回复2】：3
    >>> parse_pairwise_verdict("回复1更好。"), parse_pairwise_verdict("**2**"), parse_pairwise_verdict("Both.")
    (1, 2, None)
    >>> parse_joint_verdict('```json\\n{"correctness": 2, "logic": "Response 1"}\\n```', ["correctness", "logic"])
    {'correctness': 2, 'logic': 1}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.categories import CategorySpec

TEMPLATE_DIR = Path(__file__).parent / "templates"

PLACEHOLDERS = {
    "per_capability": {
        "conversation",
        "response_1",
        "response_2",
        "capability",
        "capability_key",
        "capability_description",
        "capability_with_description",
    },
    "joint": {"conversation", "response_1", "response_2", "capability_list", "json_example"},
}
REQUIRED_PLACEHOLDERS = {
    "per_capability": ({"conversation", "response_1", "response_2"}, {"capability", "capability_with_description"}),
    "joint": ({"conversation", "response_1", "response_2", "capability_list"}, set()),
}
_ROLE_LABELS = {
    "en": {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"},
    "zh": {"system": "系统", "user": "用户", "assistant": "助手", "tool": "工具"},
}
_PLACEHOLDER_PATTERN = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class TemplateError(ValueError):
    """A template file that cannot be used (names the file, the problem and the fix)."""


@dataclass(frozen=True)
class PromptTemplate:
    """One judge prompt. ``sha256`` identifies it in the cache key and the summary."""

    mode: str
    language: str
    user: str
    system: str | None = None
    source: str = "<string>"

    @property
    def sha256(self) -> str:
        payload = json.dumps([self.mode, self.language, self.system, self.user], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def capability_display(self, capability: str, spec: CategorySpec) -> str:
        return spec.capability_name(capability, self.language)

    def render(
        self,
        *,
        prompt: Sequence[Mapping[str, str]],
        response_1: str,
        response_2: str,
        capabilities: Sequence[str],
        spec: CategorySpec,
    ) -> list[dict[str, str]]:
        """The chat messages asking about ``capabilities`` (one in per_capability mode) of two responses."""
        values = {
            "conversation": render_conversation(prompt, self.language),
            "response_1": response_1,
            "response_2": response_2,
        }
        if self.mode == "per_capability":
            if len(capabilities) != 1:
                raise ValueError(f"per_capability templates ask about one capability, got {list(capabilities)}")
            key = capabilities[0]
            name = self.capability_display(key, spec)
            description = spec.capability_description(key, self.language)
            values |= {
                "capability": name,
                "capability_key": key,
                "capability_description": description,
                "capability_with_description": f"{name} ({description})" if description else name,
            }
        else:
            values["capability_list"] = self._capability_list(capabilities, spec)
            example = {self._json_key(key, spec): 1 + index % 2 for index, key in enumerate(capabilities)}
            values["json_example"] = json.dumps(example, ensure_ascii=False)
        user = _PLACEHOLDER_PATTERN.sub(lambda m: values.get(m.group(1), m.group(0)), self.user)
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": user}]

    def _json_key(self, capability: str, spec: CategorySpec) -> str:
        # English prompts use the keys themselves; other languages their display names (mapped back on parsing).
        return capability if self.language == "en" else self.capability_display(capability, spec)

    def _capability_list(self, capabilities: Sequence[str], spec: CategorySpec) -> str:
        lines = []
        for key in capabilities:
            description = spec.capability_description(key, self.language)
            label = self._json_key(key, spec)
            lines.append(f"- {label}: {description}" if description else f"- {label}")
        return "\n".join(lines)

    def json_keys(self, capabilities: Sequence[str], spec: CategorySpec) -> dict[str, list[str]]:
        """Names a joint answer may use for each capability (key, display names in every language)."""
        names = {}
        for key in capabilities:
            aliases = {key, key.replace("_", " "), self._json_key(key, spec)}
            aliases |= {n[key] for n in spec.capability_names.values() if key in n}
            names[key] = sorted(aliases)
        return names


def _validate(template: PromptTemplate) -> PromptTemplate:
    where = template.source
    if template.mode not in PLACEHOLDERS:
        raise TemplateError(f"{where}: mode {template.mode!r} is not per_capability or joint. Fix: set 'mode'.")
    used = set(_PLACEHOLDER_PATTERN.findall(template.user)) | set(_PLACEHOLDER_PATTERN.findall(template.system or ""))
    unknown = used - PLACEHOLDERS[template.mode]
    if unknown:
        raise TemplateError(
            f"{where}: unknown placeholder(s) {sorted(unknown)} for mode {template.mode}. "
            f"Fix: use only {sorted(PLACEHOLDERS[template.mode])}."
        )
    required, one_of = REQUIRED_PLACEHOLDERS[template.mode]
    missing = required - used
    if one_of and not one_of & used:
        missing |= {" or ".join(sorted(one_of))}
    if missing:
        raise TemplateError(f"{where}: the user message lacks {sorted(missing)}. Fix: add them to 'user'.")
    return template


def load_template(mode: str, language: str = "en", path: str | os.PathLike | None = None) -> PromptTemplate:
    """The built-in template for ``mode``/``language``, or the YAML file at ``path`` (checked against ``mode``).

    Example:
        >>> load_template("joint", "en").mode
        'joint'
    """
    from ..paths import read_yaml_file

    source = Path(path) if path is not None else TEMPLATE_DIR / f"{mode}_{language}.yaml"
    if not source.is_file():
        raise TemplateError(f"{source}: no such template file.")
    data = read_yaml_file(source, TemplateError)
    if not isinstance(data, Mapping) or not isinstance(data.get("user"), str):
        raise TemplateError(f"{source}: needs a 'user' message (a string). Fix: add user: |- ... to the file.")
    file_mode = data.get("mode", mode)
    if file_mode != mode:
        raise TemplateError(
            f"{source}: a {file_mode} template, but the labeler runs in {mode} mode. "
            f"Fix: pass --mode {file_mode}, or a {mode} template."
        )
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise TemplateError(f"{source}: 'system' must be a string or null.")
    return _validate(
        PromptTemplate(
            mode=mode,
            language=str(data.get("language", language)),
            user=data["user"],
            system=system,
            source=str(source),
        )
    )


def render_conversation(prompt: Sequence[Mapping[str, str]], language: str = "en") -> str:
    """A single user turn (or a text prompt, TRL's standard format) as its text; a multi-turn context as ``Role:
    text`` lines (every turn is kept)."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    labels = _ROLE_LABELS.get(language, _ROLE_LABELS["en"])
    colon = "：" if language == "zh" else ": "
    return "\n".join(f"{labels.get(m['role'], m['role'])}{colon}{m['content']}" for m in prompt)


# ---------------------------------------------------------------------------------------------------------------
# Verdict parsing
# ---------------------------------------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_ONLY_DIGIT = re.compile(r"^[\W_]*([12])[\W_]*$")
_RESPONSE = r"(?:response|answer|reply|output|candidate|assistant|回复|回答|答案)\s*(?:#|no\.?)?\s*"
# Statements that prefer response d ...
_PREFERS = [
    re.compile(r"\[\[\s*([12])\s*\]\]"),
    re.compile(
        r"(?<!than )(?<!比)" + _RESPONSE + r"([12])(?!\d)\s*(?:is|was|seems|wins|performs|does)\s+"
        r"(?!worse|less|weaker|inferior|not|slightly worse)",
        re.IGNORECASE,
    ),
    re.compile(r"(?<!比)(?:回复|回答|答案)\s*([12])(?!\d)\s*(?:更好|更佳|较好|更优|胜出|好|更符合|更强|比)"),
    re.compile(
        r"(?:better|best|winner|verdict|choice|prefer(?:red)?|answer)\s*(?:one|response|reply)?\s*"
        r"(?:is|would be|:|=)?\s*(?:response|reply)?\s*#?([12])(?!\d)",
        re.IGNORECASE,
    ),
    re.compile(
        r"(?:更好的是|更好的回复是|更佳的是|更好的为|选择|结论是|结论：|答案是|答案为|答案：)\s*(?:回复|回答)?\s*([12])(?!\d)"
    ),
]
# ... and statements against response d (they prefer the other one).
_DISPREFERS = [
    re.compile(
        _RESPONSE + r"([12])(?!\d)\s*(?:is|was|seems)\s+(?:slightly\s+)?(?:worse|less|weaker|inferior|not)",
        re.IGNORECASE,
    ),
    re.compile(r"(?:回复|回答)\s*([12])(?!\d)\s*(?:更差|较差|不如)"),
    re.compile(r"(?:better than|比)\s*" + _RESPONSE + r"([12])(?!\d)", re.IGNORECASE),
]
_STANDALONE_DIGIT = re.compile(r"(?<![\d.])([12])(?![\d])")


def _clean(text: str) -> str:
    return _FENCE.sub("", _THINK.sub("", text).strip()).strip()


def parse_pairwise_verdict(text: str | None) -> int | None:
    """1 or 2 for the response an answer prefers; ``None`` when it is unclear (undecided).

    Example:
        >>> [parse_pairwise_verdict(t) for t in ["1", "Response 2 is better.", "[[1]]", "12", "1 and 2 tie", ""]]
        [1, 2, 1, None, None, None]
    """
    if not text:
        return None
    text = _clean(text)
    match = _ONLY_DIGIT.match(text)
    if match:
        return int(match.group(1))
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        data = None
    if isinstance(data, Mapping):
        for key in ("better", "winner", "verdict", "answer", "choice", "preferred", "result"):
            if key in data:
                return _position(data[key])
    if isinstance(data, int) and data in (1, 2):
        return data
    found = {int(m.group(1)) for pattern in _PREFERS for m in pattern.finditer(text)}
    found |= {3 - int(m.group(1)) for pattern in _DISPREFERS for m in pattern.finditer(text)}
    if len(found) == 1:
        return found.pop()
    if found:
        return None  # contradictory explicit statements
    digits = {int(d) for d in _STANDALONE_DIGIT.findall(text)}
    return digits.pop() if len(digits) == 1 else None


def _position(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and value in (1, 2):
        return int(value)
    if isinstance(value, str):
        return parse_pairwise_verdict(value)
    return None


def _normalize_key(name: str) -> str:
    return re.sub(r"[\s\-_【】\[\]\"'`*]+", "_", name.strip().casefold()).strip("_")


def _first_json_object(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        pass
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            return json.loads(text[start : end + 1])
        except (json.JSONDecodeError, ValueError):
            return None
    return None


def parse_joint_verdict(text: str | None, capabilities: Sequence[str] | Mapping[str, Sequence[str]]) -> dict:
    """``{capability: 1 | 2 | None}`` from a joint answer (JSON, or lenient ``name: 1`` lines).

    ``capabilities`` is a list of keys, or ``{key: [names the answer may use]}``
    (:meth:`PromptTemplate.json_keys`).
    """
    names = capabilities if isinstance(capabilities, Mapping) else {key: [key] for key in capabilities}
    lookup = {}
    for key, aliases in names.items():
        for alias in [key, *aliases]:
            lookup[_normalize_key(alias)] = key
    verdicts: dict[str, int | None] = {key: None for key in names}
    if not text:
        return verdicts
    text = _clean(text)
    data = _first_json_object(text)
    if isinstance(data, Mapping):
        if len(data) == 1 and isinstance(next(iter(data.values())), Mapping):  # {"verdicts": {...}}
            data = next(iter(data.values()))
        for name, value in data.items():
            key = lookup.get(_normalize_key(str(name)))
            if key is not None:
                verdicts[key] = _position(value)
        return verdicts
    for line in text.splitlines():  # lenient: "correctness: 1", "- 正确性：回复2"
        match = re.match(r"^\s*[-*•]?\s*[\"'【\[]?(.+?)[\"'】\]]?\s*[:：=]\s*(.+)$", line)
        if match:
            key = lookup.get(_normalize_key(match.group(1)))
            if key is not None:
                verdicts[key] = parse_pairwise_verdict(match.group(2))
    return verdicts
