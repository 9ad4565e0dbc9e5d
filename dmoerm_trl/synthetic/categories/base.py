"""What every category of the synthetic world provides: conversations, response plans, rendering, measurement, gold.

A category module holds its catalogue (facts, situations, writing tasks, personas: hand-written English text) and a
:class:`CategoryWorld` subclass. The generator samples a conversation and two response *plans* (the attribute
levels a response should have), renders each plan to text, and every later consumer (the generator's own scores,
the capability judge, the gold reward) measures the attributes back from the text with :meth:`features`.
:meth:`planned_features` says what rendering must realize; the tests check ``features(render(plan)) ==
planned_features(plan)`` on thousands of responses.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Conversation:
    """A prompt of the world: ``src`` user turns and ``tgt`` earlier assistant turns (the mtmc-rlhf layout).

    ``item`` is what measurement needs (a fact, a situation, a task, a persona); ``unit`` is the unit of the
    train/test split (the item, or a persona/situation combination in role-play).
    """

    category: str
    src: tuple[str, ...]
    tgt: tuple[str, ...]
    item: str
    unit: str

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages (TRL's conversational prompt)."""
        out = []
        for turn, user in enumerate(self.src):
            out.append({"role": "user", "content": user})
            if turn < len(self.tgt):
                out.append({"role": "assistant", "content": self.tgt[turn]})
        return out


class CategoryWorld:
    """One category: its capabilities, gold formula, catalogue and the rules that connect them."""

    name: str = ""
    zh_name: str = ""
    capabilities: tuple[str, ...] = ()
    descriptions: ClassVar[Mapping[str, str]] = {}  # capability -> what is measured (goes into the judge prompt)
    gold_formula: str = ""  # human-readable form of gold()

    # -- catalogue ------------------------------------------------------------------------------------------------
    def anchors(self) -> dict[str, str]:
        """``{text that identifies an item in a conversation: item key}`` (matched case-insensitively)."""
        raise NotImplementedError

    def units(self) -> list[str]:
        """Every unit of the train/test split, in a fixed order."""
        raise NotImplementedError

    def final_user_messages(self) -> Iterable[str]:
        """Every text the last user turn can have (to split a flat ``prompt + response`` string)."""
        raise NotImplementedError

    # -- generation -----------------------------------------------------------------------------------------------
    def sample_conversation(self, unit: str, rng: random.Random, multi_turn_probability: float) -> Conversation:
        raise NotImplementedError

    def sample_plan(self, rng: random.Random) -> dict:
        raise NotImplementedError

    def render(self, conversation: Conversation, plan: Mapping, rng: random.Random) -> str:
        raise NotImplementedError

    def planned_features(self, plan: Mapping) -> dict:
        raise NotImplementedError

    # -- measurement and gold -------------------------------------------------------------------------------------
    def features(self, item: str, text: str) -> dict:
        raise NotImplementedError

    def capability_scores(self, features: Mapping) -> dict[str, float]:
        raise NotImplementedError

    def gold(self, scores: Mapping[str, float]) -> float:
        raise NotImplementedError


def pick_distinct(rng: random.Random, pool: Iterable[str], k: int) -> list[str]:
    pool = list(pool)
    return rng.sample(pool, k) if k else []


def greeting_turn(rng: random.Random) -> tuple[str, str]:
    """An opening exchange that makes a conversation multi-turn."""
    return rng.choice(GREETINGS)


GREETINGS = (
    ("Hi there!", "Hello! How can I help you today?"),
    ("Good morning.", "Good morning! What can I do for you?"),
    ("Hey, do you have a minute?", "Of course, I'm here. What's on your mind?"),
)
