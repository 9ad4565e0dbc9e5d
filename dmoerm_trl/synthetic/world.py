"""The synthetic ground-truth world: categories, capabilities, and the gold score of any (prompt, response).

:class:`SyntheticWorld` recognises which category and item (fact, situation, writing task, persona) a conversation
is about, measures the response's attributes from its text, turns them into capability scores in ``[0, 1]`` and
combines those into the category's gold score. The generator, the capability judge and the gold reward all go
through it, so they agree by construction. The categories, capabilities and formulas are listed in
``docs/fidelity.md`` and in :meth:`SyntheticWorld.describe`.

Example:
    >>> from dmoerm_trl.synthetic.world import SyntheticWorld
    >>> world = SyntheticWorld()
    >>> prompt = [{"role": "user", "content": "What is the capital of France?"}]
    >>> scores = world.capability_scores(prompt, "The capital of France is Paris. This is because the state is there.")
    >>> scores["correctness"], scores["reasoning_ability"], scores["depth_of_knowledge"], scores["objectiveness"]
    (1.0, 1.0, 0.0, 1.0)
    >>> world.gold(prompt, "The capital of France is Paris."), world.gold(prompt, "Great question! It is Lyon.")
    (4.5, 0.25)
    >>> world.identify("Hey. I lost my phone on the bus today.")
    PromptInfo(category='chitchat', item='lost_phone')
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from ..data.categories import CategorySpec
from .categories import CATEGORY_WORLDS, CategoryWorld
from .text_features import normalize

__all__ = ["DEFAULT_CATEGORIES", "PromptInfo", "ResponseEvaluation", "SyntheticWorld", "UnknownPromptError"]

DEFAULT_CATEGORIES = ("objective_qa", "chitchat", "text_creation", "roleplay")

# Chat-template debris around a response inside a flat text (ChatML, Llama 3, Mistral, plain "Assistant:").
_RESPONSE_START = re.compile(
    r"^\s*(?:<\|im_end\|>|<\|eot_id\|>|</s>|<\|end\|>|\[/INST\])?\s*"
    r"(?:<\|im_start\|>assistant|<\|start_header_id\|>assistant<\|end_header_id\|>|<\|assistant\|>|Assistant:)?\s*"
)
_RESPONSE_END = re.compile(r"\s*(?:<\|im_end\|>|<\|eot_id\|>|<\|endoftext\|>|</s>|<\|end\|>)?\s*$")


class UnknownPromptError(ValueError):
    """The prompt is not one of the synthetic world's conversations."""


@dataclass(frozen=True)
class PromptInfo:
    category: str
    item: str


@dataclass
class ResponseEvaluation:
    """Everything the world knows about one response."""

    category: str
    item: str
    features: dict = field(default_factory=dict)
    capability_scores: dict[str, float] = field(default_factory=dict)
    gold: float = 0.0


def conversation_text(prompt) -> str:
    """All turns of a prompt (a string, or a list of ``{"role", "content"}`` messages) as one string."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) and "content" in m for m in prompt):
        return "\n".join(str(m["content"]) for m in prompt)
    raise TypeError(
        f"a prompt must be a string or a list of {{'role', 'content'}} messages, got {type(prompt).__name__}"
    )


class SyntheticWorld:
    """The ground truth of the fidelity benchmark.

    Args:
        categories: category keys to include (default: objective_qa, chitchat, text_creation, roleplay).
    """

    def __init__(self, categories: Sequence[str] | None = None):
        names = list(categories) if categories else list(DEFAULT_CATEGORIES)
        unknown = [name for name in names if name not in CATEGORY_WORLDS]
        if unknown:
            raise ValueError(f"Unknown synthetic categories {unknown}; available: {sorted(CATEGORY_WORLDS)}.")
        self.worlds: dict[str, CategoryWorld] = {name: CATEGORY_WORLDS[name]() for name in names}
        anchors: dict[str, tuple[str, str]] = {}
        for name, world in self.worlds.items():
            for anchor, item in world.anchors().items():
                key = normalize(anchor)
                if key in anchors:
                    raise ValueError(f"anchor {anchor!r} of {name} is also used by {anchors[key]}")
                anchors[key] = (name, item)
        # Longest first, so an anchor that contains another wins.
        self._anchors = sorted(anchors.items(), key=lambda entry: -len(entry[0]))

    # -- categories -------------------------------------------------------------------------------------------------
    @property
    def categories(self) -> dict[str, list[str]]:
        """``{category: [capabilities]}`` (what ``DMoERMConfig.categories`` and the labeler take)."""
        return {name: list(world.capabilities) for name, world in self.worlds.items()}

    def category_spec(self) -> CategorySpec:
        """The category set with Chinese aliases (the mtmc-rlhf ``label``) and the judge's capability descriptions."""
        from ..data.categories import PAPER_CAPABILITY_NAMES_ZH

        capabilities = {c for world in self.worlds.values() for c in world.capabilities}
        descriptions: dict[str, str] = {}
        for world in self.worlds.values():
            descriptions.update(world.descriptions)
        return CategorySpec(
            categories=self.categories,
            aliases={world.zh_name: name for name, world in self.worlds.items()},
            capability_names={
                "zh": {c: PAPER_CAPABILITY_NAMES_ZH[c] for c in sorted(capabilities) if c in PAPER_CAPABILITY_NAMES_ZH}
            },
            capability_descriptions={"en": {c: descriptions[c] for c in sorted(capabilities)}},
            source="synthetic",
        )

    def category_yaml(self) -> str:
        """The category set as YAML (``dmoerm label --categories`` / ``dmoerm train --categories`` read it)."""
        import yaml

        header = "# The synthetic world's category set (written by dmoerm_trl.synthetic; see docs/fidelity.md).\n"
        return header + yaml.safe_dump(self.category_spec().to_yaml_dict(), allow_unicode=True, sort_keys=False)

    def describe(self) -> dict:
        """Categories, capabilities, capability descriptions and gold formulas (for reports and world.json)."""
        return {
            name: {
                "zh_name": world.zh_name,
                "capabilities": dict(world.descriptions),
                "gold_formula": world.gold_formula,
            }
            for name, world in self.worlds.items()
        }

    # -- recognising prompts ----------------------------------------------------------------------------------------
    def find(self, prompt) -> PromptInfo | None:
        """The category and item a prompt is about, or ``None`` if it is not a conversation of this world."""
        text = normalize(conversation_text(prompt))
        for anchor, (category, item) in self._anchors:
            if anchor in text:
                return PromptInfo(category, item)
        return None

    def identify(self, prompt) -> PromptInfo:
        """Like :meth:`find`, but raises :class:`UnknownPromptError` naming the prompt."""
        info = self.find(prompt)
        if info is None:
            snippet = conversation_text(prompt)[:120]
            raise UnknownPromptError(
                f"The prompt {snippet!r} is not a conversation of the synthetic world (categories "
                f"{list(self.worlds)}). Score only prompts produced by dmoerm_trl.synthetic.generate."
            )
        return info

    @cached_property
    def _final_user_messages(self) -> list[str]:
        messages = {normalize(m) for world in self.worlds.values() for m in world.final_user_messages()}
        return sorted(messages, key=len, reverse=True)

    def split_text(self, text: str) -> tuple[str, str]:
        """Split a flat ``prompt + response`` string (chat template or plain) after the last user turn.

        Example:
            >>> SyntheticWorld().split_text("<|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n"
            ...                             "<|im_start|>assistant\\nParis.<|im_end|>")[1]
            'Paris.'
        """
        lowered = normalize(text)
        end = -1
        for message in self._final_user_messages:
            position = lowered.rfind(message)
            if position >= 0:
                end = max(end, position + len(message))
        if end < 0:
            raise UnknownPromptError(f"No user turn of the synthetic world found in {text[:120]!r}.")
        response = _RESPONSE_START.sub("", text[end:], count=1)
        return text[:end], _RESPONSE_END.sub("", response, count=1)

    # -- measuring responses ----------------------------------------------------------------------------------------
    def evaluate(self, prompt, response: str) -> ResponseEvaluation:
        """Features, capability scores and gold score of ``response`` to ``prompt``."""
        info = prompt if isinstance(prompt, PromptInfo) else self.identify(prompt)
        world = self.worlds[info.category]
        features = world.features(info.item, response)
        scores = world.capability_scores(features)
        return ResponseEvaluation(info.category, info.item, features, scores, round(world.gold(scores), 6))

    def features(self, prompt, response: str) -> dict:
        return self.evaluate(prompt, response).features

    def capability_scores(self, prompt, response: str) -> dict[str, float]:
        return self.evaluate(prompt, response).capability_scores

    def gold(self, prompt, response: str) -> float:
        return self.evaluate(prompt, response).gold
