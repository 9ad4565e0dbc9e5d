"""Category sets: which task categories exist and which capability points each is decomposed into.

The built-in ``"paper"`` set is the DMoERM paper's (arXiv 2403.01197, and its reference code quanshr/DMoERM-v1,
``prepare_data/config.py``): five categories with their Chinese names (as used in the mtmc-rlhf ``label`` field)
and capability points. User-defined sets are YAML files, either the short form::

    objective_qa: [correctness, logic]
    chitchat: [empathy, fluency]

or the long form, with aliases (other names of a category in your data) and display names / descriptions of the
capabilities that the labeling prompts use::

    categories:
      objective_qa:
        aliases: [客观知识问答, "objective QA"]
        capabilities:
          correctness: {en: correctness, zh: 正确性, description: "Is every factual claim right?"}
          logic: {zh: 逻辑性}

Example:
    >>> from dmoerm_trl.data.categories import load_category_set, load_category_spec
    >>> sorted(load_category_set("paper"))
    ['chitchat', 'objective_qa', 'roleplay', 'subjective_qa', 'text_creation']
    >>> spec = load_category_spec("paper")
    >>> spec.resolve("角色扮演"), spec.capability_name("logic", "zh")
    ('roleplay', '逻辑性')
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PAPER_CAPABILITY_DESCRIPTIONS",
    "PAPER_CAPABILITY_NAMES_ZH",
    "PAPER_CATEGORIES",
    "PAPER_CATEGORY_NAMES_ZH",
    "CategorySpec",
    "load_category_set",
    "load_category_spec",
]

# The paper's capability points per category, in the paper's order (keys as in the reference code).
PAPER_CATEGORIES: dict[str, list[str]] = {
    "roleplay": [
        "character_setting_and_emotional_investment",
        "conversational_sense",
        "empathy_ability",
        "manifestation_of_relationship_traits",
        "personalized_characteristic_expression",
        "content_richness",
    ],
    "chitchat": ["conversational_sense", "proactivity", "emotion_expression", "empathy_ability", "content_richness"],
    "subjective_qa": [
        "convincing_ability",
        "logic",
        "viewpoint_richness",
        "breadth_of_knowledge",
        "question_specific",
    ],
    "objective_qa": [
        "correctness",
        "objectiveness",
        "reasoning_ability",
        "logic",
        "depth_of_knowledge",
        "question_specific",
    ],
    "text_creation": ["intent_conformity", "expressiveness", "readability", "content_richness", "logic"],
}

# Category names as they appear in the mtmc-rlhf `label` field.
PAPER_CATEGORY_NAMES_ZH: dict[str, str] = {
    "roleplay": "角色扮演",
    "chitchat": "闲聊",
    "subjective_qa": "主观知识问答",
    "objective_qa": "客观知识问答",
    "text_creation": "文本创作",
}

# The paper's Chinese capability names (what the Chinese labeling prompt asks about).
PAPER_CAPABILITY_NAMES_ZH: dict[str, str] = {
    "character_setting_and_emotional_investment": "人设和情感带入",
    "conversational_sense": "对话感",
    "empathy_ability": "共情能力",
    "manifestation_of_relationship_traits": "关系特点体现",
    "personalized_characteristic_expression": "个性化特征体现",
    "content_richness": "内容丰富性",
    "proactivity": "主动性",
    "emotion_expression": "情感表达",
    "convincing_ability": "说服力",
    "logic": "逻辑性",
    "viewpoint_richness": "观点丰富度",
    "breadth_of_knowledge": "知识面广度",
    "question_specific": "问题针对性",
    "correctness": "正确性",
    "objectiveness": "客观程度",
    "reasoning_ability": "推理能力",
    "depth_of_knowledge": "知识面深度",
    "intent_conformity": "意图符合程度",
    "expressiveness": "表达能力",
    "readability": "可读性",
}

# One-line English descriptions for the English prompt (ours; the paper gives names only).
PAPER_CAPABILITY_DESCRIPTIONS: dict[str, str] = {
    "character_setting_and_emotional_investment": "stays in the assigned character and conveys its emotions",
    "conversational_sense": "reads like a natural turn of a conversation rather than an essay",
    "empathy_ability": "understands and responds to the user's feelings",
    "manifestation_of_relationship_traits": "reflects the relationship between the character and the user",
    "personalized_characteristic_expression": "shows the character's individual traits and style",
    "content_richness": "offers substantial, varied and relevant content",
    "proactivity": "moves the conversation forward, e.g. with questions or new topics",
    "emotion_expression": "expresses emotions appropriately",
    "convincing_ability": "argues its position persuasively",
    "logic": "is logically coherent, without contradictions or non-sequiturs",
    "viewpoint_richness": "considers several viewpoints",
    "breadth_of_knowledge": "draws on broad relevant knowledge",
    "question_specific": "addresses exactly what was asked",
    "correctness": "is factually correct",
    "objectiveness": "is neutral and objective",
    "reasoning_ability": "reasons soundly step by step toward the answer",
    "depth_of_knowledge": "shows deep, expert-level knowledge",
    "intent_conformity": "does what the user intended",
    "expressiveness": "is well expressed, with vivid and precise language",
    "readability": "is easy to read and well organised",
}

_KEY_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


@dataclass
class CategorySpec:
    """A category set with the names the data and the prompts use.

    Attributes:
        categories: ``{category key: [capability key, ...]}`` in order.
        aliases: other names of a category (e.g. its Chinese name) -> its key. Matching is case-insensitive.
        capability_names: ``{language: {capability key: display name}}`` used in prompts.
        capability_descriptions: ``{language: {capability key: description}}`` used in prompts.
        source: where the set came from (``"paper"`` or a file path).
    """

    categories: dict[str, list[str]]
    aliases: dict[str, str] = field(default_factory=dict)
    capability_names: dict[str, dict[str, str]] = field(default_factory=dict)
    capability_descriptions: dict[str, dict[str, str]] = field(default_factory=dict)
    source: str = "<dict>"

    def resolve(self, name: str) -> str | None:
        """The category key for a key or an alias, or ``None``."""
        if name in self.categories:
            return name
        folded = name.strip().casefold()
        for key in self.categories:
            if key.casefold() == folded:
                return key
        for alias, key in self.aliases.items():
            if alias.casefold() == folded:
                return key
        return None

    def capability_name(self, capability: str, language: str = "en") -> str:
        """How prompts in ``language`` name a capability (default: the key with spaces)."""
        names = self.capability_names.get(language, {})
        return names.get(capability) or capability.replace("_", " ")

    def capability_description(self, capability: str, language: str = "en") -> str:
        return self.capability_descriptions.get(language, {}).get(capability, "")

    def to_yaml_dict(self) -> dict[str, Any]:
        """The long YAML form of this set (what :func:`load_category_spec` reads back)."""
        out: dict[str, Any] = {}
        for key, capabilities in self.categories.items():
            entry: dict[str, Any] = {"aliases": [a for a, k in self.aliases.items() if k == key], "capabilities": {}}
            for capability in capabilities:
                info = {
                    lang: names[capability] for lang, names in self.capability_names.items() if capability in names
                }
                for lang, descriptions in self.capability_descriptions.items():
                    if capability in descriptions:
                        info["description" if lang == "en" else f"description_{lang}"] = descriptions[capability]
                entry["capabilities"][capability] = info
            out[key] = entry
        return {"categories": out}


def _paper_spec() -> CategorySpec:
    return CategorySpec(
        categories={key: list(caps) for key, caps in PAPER_CATEGORIES.items()},
        aliases={zh: key for key, zh in PAPER_CATEGORY_NAMES_ZH.items()}
        | {"chat": "chitchat", "subj_qa": "subjective_qa", "obj_qa": "objective_qa", "text": "text_creation"},
        capability_names={"zh": dict(PAPER_CAPABILITY_NAMES_ZH)},
        capability_descriptions={"en": dict(PAPER_CAPABILITY_DESCRIPTIONS)},
        source="paper",
    )


def _invalid(source: str, where: str, problem: str, fix: str) -> ValueError:
    return ValueError(f"{source}, {where}: {problem}. Fix: {fix}")


def _check_key(source: str, where: str, key: Any) -> str:
    if not isinstance(key, str) or not _KEY_PATTERN.match(key):
        raise _invalid(
            source,
            where,
            f"{key!r} is not a valid key",
            "use letters, digits, '_' or '-', starting with a letter (keys name LoRA adapters)",
        )
    return key


def _spec_from_mapping(data: Mapping, source: str) -> CategorySpec:
    body = data.get("categories", data) if isinstance(data, Mapping) else data
    if not isinstance(body, Mapping) or not body:
        raise _invalid(source, "top level", "no categories", "map each category to its list of capabilities")
    spec = CategorySpec(categories={}, source=source)
    for key, entry in body.items():
        _check_key(source, f"category {key!r}", key)
        where = f"categories.{key}"
        if isinstance(entry, Mapping):
            aliases = entry.get("aliases") or []
            if isinstance(aliases, str):
                aliases = [aliases]
            if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
                raise _invalid(source, f"{where}.aliases", "not a list of strings", "write aliases: [name, ...]")
            for alias in aliases:
                spec.aliases[alias] = key
            capabilities = entry.get("capabilities")
        else:
            capabilities = entry
        if isinstance(capabilities, Mapping):
            infos = dict(capabilities)
        elif isinstance(capabilities, list):
            infos = {}
            for item in capabilities:
                if isinstance(item, Mapping) and len(item) == 1:
                    infos.update(item)
                else:
                    infos[item] = None
        else:
            raise _invalid(
                source,
                f"{where}.capabilities",
                f"expected a list or mapping, got {type(capabilities).__name__}",
                "list the category's capability keys",
            )
        if not infos:
            raise _invalid(source, f"{where}.capabilities", "empty", "give each category at least one capability")
        names = []
        for capability, info in infos.items():
            _check_key(source, f"{where}.capabilities", capability)
            names.append(capability)
            if info is None:
                continue
            if not isinstance(info, Mapping):
                raise _invalid(
                    source,
                    f"{where}.capabilities.{capability}",
                    "expected a mapping",
                    "write {zh: name, description: text} or nothing",
                )
            for info_key, value in info.items():
                if not isinstance(value, str):
                    raise _invalid(source, f"{where}.capabilities.{capability}.{info_key}", "not a string", "quote it")
                if info_key == "description":
                    spec.capability_descriptions.setdefault("en", {})[capability] = value
                elif info_key.startswith("description_"):
                    spec.capability_descriptions.setdefault(info_key[len("description_") :], {})[capability] = value
                else:
                    spec.capability_names.setdefault(info_key, {})[capability] = value
        spec.categories[key] = names
    return spec


def load_category_spec(name_or_path: str | os.PathLike | Mapping | CategorySpec = "paper") -> CategorySpec:
    """A :class:`CategorySpec` from ``"paper"``, a YAML file, a mapping, or an existing spec.

    Example:
        >>> load_category_spec({"math": ["correctness", "rigor"]}).categories
        {'math': ['correctness', 'rigor']}
    """
    if isinstance(name_or_path, CategorySpec):
        return name_or_path
    if isinstance(name_or_path, Mapping):
        return _spec_from_mapping(name_or_path, "<dict>")
    name = os.fspath(name_or_path)
    if name == "paper":
        return _paper_spec()
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"Category set {name!r}: not 'paper' and no such YAML file.")
    from ..paths import read_yaml_file

    return _spec_from_mapping(read_yaml_file(path), str(path))


def load_category_set(name_or_path: str | os.PathLike | Mapping | CategorySpec = "paper") -> dict[str, list[str]]:
    """``{category: [capabilities]}`` of ``"paper"`` or a YAML file (what ``DMoERMConfig.categories`` takes).

    Example:
        >>> load_category_set("paper")["objective_qa"]
        ['correctness', 'objectiveness', 'reasoning_ability', 'logic', 'depth_of_knowledge', 'question_specific']
    """
    spec = load_category_spec(name_or_path)
    return {key: list(capabilities) for key, capabilities in spec.categories.items()}
