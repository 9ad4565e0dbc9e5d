"""Text creation: short poems, story openings, product descriptions, notes. Staying on the requested subject
dominates; vivid language and richness only count when the text is on topic.

Capabilities (measured from the response text and the task's subject keyword):

- ``intent_conformity``: fraction of the task's subject keywords the text names (off-topic texts: 0)
- ``expressiveness``: ``min(distinct vivid words, 4) / 4`` (a fixed lexicon: "shimmering", "golden", "velvet"...)
- ``readability``: 1 if the text is laid out in at least 3 non-empty lines, else 0
- ``content_richness``: ``min(informative segments, 4) / 4`` (a line or sentence of at least 4 words)

Gold: ``2.0 intent + 1.5 expressiveness * intent + 1.0 readability + 1.0 content_richness * intent
+ 0.2 expressiveness``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..text_features import (
    PLAIN_WORDS,
    VIVID_WORDS,
    contains_phrase,
    count_markers,
    coverage,
    informative_segments,
    nonempty_lines,
)
from .base import CategoryWorld, Conversation


@dataclass(frozen=True)
class WritingTask:
    key: str
    core: str  # "a short poem about the ocean": the request names it
    keywords: tuple[str, ...]
    lines: tuple[str, ...]  # each with one "{adj}" slot; the first names a keyword


def _task(key, core, keywords, lines) -> WritingTask:
    return WritingTask(key, core, tuple(keywords.split(", ")), tuple(lines))


TASKS = (
    _task("poem_ocean", "a short poem about the ocean", "ocean|sea",
          ["The {adj} ocean rolls against the shore", "Gulls circle over the {adj} foam",
           "Boats drift home beneath a {adj} sky", "The tide keeps its {adj} promise every night"]),
    _task("poem_autumn", "a short poem about autumn", "autumn",
          ["Autumn paints the {adj} hills in red", "Leaves fall softly on the {adj} path",
           "The air smells of {adj} smoke and wet earth", "Evenings arrive early with {adj} light"]),
    _task("poem_city", "a short poem about a city at night", "city",
          ["The {adj} city hums after midnight", "Neon signs flicker in {adj} windows",
           "Taxis hurry through the {adj} streets", "Somewhere a {adj} saxophone is playing"]),
    _task("poem_mountains", "a short poem about the mountains", "mountains|mountain",
          ["The {adj} mountains stand above the clouds", "Snow rests on every {adj} peak",
           "Pine trees climb the {adj} slopes", "Eagles glide in the {adj} wind"]),
    _task("poem_friendship", "a short poem about friendship", "friendship|friend|friends",
          ["True friendship is a {adj} fire", "It keeps us warm on {adj} days",
           "Old jokes return like {adj} songs", "Two voices share a {adj} road"]),
    _task("poem_coffee", "a short poem about morning coffee", "coffee",
          ["The {adj} coffee steams beside the window", "Its smell wakes the {adj} kitchen",
           "The first sip chases {adj} dreams away", "The day begins with a {adj} cup"]),
    _task("story_key", "the opening of a story about a lost key", "key|keys",
          ["Mara found the {adj} key under a loose floorboard",
           "Nobody in the {adj} house remembered the lock it opened",
           "That night a {adj} knock came at the door", "The stranger asked for the {adj} thing she had hidden"]),
    _task("story_robot", "the opening of a story about a robot who learns to paint", "robot",
          ["The {adj} robot had never held a brush before", "Its metal fingers shook over the {adj} canvas",
           "The first stroke left a {adj} line across the page", "By morning the workshop was full of {adj} colour"]),
    _task("story_dragon", "the opening of a story about a dragon in a small village", "dragon",
          ["A {adj} dragon landed in the village square at dawn", "The baker dropped a tray of {adj} bread",
           "Children peeked out from {adj} doorways", "The mayor walked out with a {adj} smile"]),
    _task("story_mars", "the opening of a story about a journey to Mars", "Mars",
          ["The {adj} ship left orbit on its way to Mars", "Commander Lee watched the {adj} Earth shrink behind her",
           "Six months of {adj} silence lay ahead", "Then the radio crackled with a {adj} voice"]),
    _task("product_lamp", "a product description for a desk lamp", "lamp",
          ["This {adj} lamp brightens any desk in seconds", "Its {adj} arm bends to any angle",
           "Three {adj} brightness levels suit reading and work", "The base is made from {adj} oak"]),
    _task("product_backpack", "a product description for a hiking backpack", "backpack",
          ["This {adj} backpack carries everything for a day on the trail", "Padded straps stay {adj} on long climbs",
           "A {adj} rain cover tucks into the bottom pocket", "Side pockets hold two {adj} water bottles"]),
    _task("product_headphones", "a product description for wireless headphones",
          "headphones|headphone",
          ["These {adj} headphones deliver rich sound without any wires", "Soft cushions feel {adj} for hours",
           "The battery lasts a {adj} thirty hours", "Noise cancelling creates a {adj} bubble of calm"]),
    _task("product_teapot", "a product description for a ceramic teapot", "teapot|tea pot",
          ["This {adj} teapot brews four cups at once", "Its {adj} glaze is painted by hand",
           "A built-in strainer catches {adj} leaves", "The lid stays put with a {adj} clip"]),
    _task("note_teacher", "a short thank-you note to a teacher", "teacher",
          ["Thank you for being such a {adj} teacher this year", "Your {adj} lessons made every morning better",
           "You believed in me on {adj} days", "I will carry your {adj} advice with me"]),
    _task("note_neighbour", "a short welcome note for a new neighbour", "neighbour|neighbor",
          ["Welcome to the street, dear {adj} neighbour", "The bakery on the corner sells {adj} bread",
           "Our garden gate is always open for {adj} visits", "We hope this {adj} place feels like home soon"]),
    _task("slogans_bakery", "some slogans for a family bakery", "bakery",
          ["Our {adj} bakery wakes up before the sun", "Every loaf comes out {adj} and warm",
           "Sweet mornings start with a {adj} croissant", "Come in hungry and leave with a {adj} smile"]),
    _task("poem_rain", "a short poem about rain", "rain|raining|rainy",
          ["The {adj} rain taps on the roof", "Puddles gather {adj} reflections",
           "Umbrellas bloom on {adj} streets", "The garden drinks the {adj} water"]),
    _task("poem_stars", "a short poem about the stars", "stars|star",
          ["The {adj} stars wake one by one", "They scatter over the {adj} dark",
           "Sailors once followed their {adj} map", "Tonight they keep a {adj} watch"]),
    _task("story_train", "the opening of a mystery story set on a train", "train",
          ["The {adj} train left the station at midnight", "In carriage four a {adj} suitcase sat unclaimed",
           "The conductor noticed a {adj} stain on the handle", "Nobody admitted to owning the {adj} bag"]),
    _task("product_shoes", "a product description for running shoes", "shoes|shoe|sneakers",
          ["These {adj} shoes are built for the long run", "The {adj} sole absorbs every step",
           "A breathable mesh keeps feet {adj} and dry", "Reflective strips shine on {adj} evening runs"]),
    _task("wedding_toast", "a short wedding toast", "toast",
          ["Let me raise this {adj} toast to the happy couple", "Your {adj} love inspires everyone here",
           "May your home be full of {adj} laughter", "Here is to many {adj} years together"]),
    _task("poem_forest", "a short poem about a forest", "forest|woods",
          ["The {adj} forest holds its breath", "Moss covers every {adj} stone",
           "Deer move through {adj} shadows", "Light falls in {adj} ribbons"]),
    _task("invitation_library", "an invitation to a library reading night", "library",
          ["Join us at the {adj} library this Friday", "Local authors will read {adj} stories aloud",
           "Tea and {adj} biscuits are on the house", "Bring a friend and a {adj} question"]),
)
TASKS_BY_KEY = {task.key: task for task in TASKS}
REQUESTS = ("Write {}.", "Could you write {}?", "Please write {} for me.", "I need {}. Can you write one?")


def _fill(line: str, word: str) -> str:
    return line.replace("{adj}", word)


class TextCreation(CategoryWorld):
    name = "text_creation"
    zh_name = "文本创作"
    capabilities = ("intent_conformity", "expressiveness", "readability", "content_richness")
    descriptions: ClassVar[dict[str, str]] = {
        "intent_conformity": "is about the subject the user asked for",
        "expressiveness": "uses vivid, evocative words (shimmering, golden, velvet...)",
        "readability": "is laid out in separate lines rather than one block",
        "content_richness": "offers several informative sentences",
    }
    gold_formula = ("2.0 intent_conformity + 1.5 expressiveness * intent_conformity + 1.0 readability "
                    "+ 1.0 content_richness * intent_conformity + 0.2 expressiveness")

    def anchors(self) -> dict[str, str]:
        return {task.core: task.key for task in TASKS}

    def units(self) -> list[str]:
        return [task.key for task in TASKS]

    def final_user_messages(self):
        return [request.format(task.core) for task in TASKS for request in REQUESTS]

    def sample_conversation(self, unit: str, rng: random.Random, multi_turn_probability: float) -> Conversation:
        request = rng.choice(REQUESTS).format(TASKS_BY_KEY[unit].core)
        return Conversation(self.name, (request[:1].upper() + request[1:],), (), unit, unit)

    def sample_plan(self, rng: random.Random) -> dict:
        lines = rng.randint(1, 4)
        return {"on_topic": rng.random() < 0.75, "lines": lines, "vivid": rng.randint(0, lines),
                "layout": "lines" if rng.random() < 0.5 else "paragraph"}

    def off_topic_tasks(self, task: WritingTask) -> list[WritingTask]:
        """Tasks whose lines never name ``task``'s keywords (an off-topic answer borrows one of them)."""
        return [other for other in TASKS if other.key != task.key
                and not any(contains_phrase(line, k) for line in other.lines for k in task.keywords)]

    def render(self, conversation: Conversation, plan: Mapping, rng: random.Random) -> str:
        task = TASKS_BY_KEY[conversation.item]
        source = task if plan["on_topic"] else rng.choice(self.off_topic_tasks(task))
        lines = list(source.lines[: plan["lines"]])
        vivid_lines = set(rng.sample(range(len(lines)), plan["vivid"]))
        vivid_words = iter(rng.sample(VIVID_WORDS, plan["vivid"]))
        lines = [_fill(line, next(vivid_words) if i in vivid_lines else rng.choice(PLAIN_WORDS))
                 for i, line in enumerate(lines)]
        if plan["layout"] == "lines":
            return "\n".join(lines)
        return " ".join(line + "." for line in lines)

    def planned_features(self, plan: Mapping) -> dict:
        return {"keyword_coverage": 1.0 if plan["on_topic"] else 0.0, "vivid": plan["vivid"],
                "informative": plan["lines"], "lines": plan["lines"] if plan["layout"] == "lines" else 1}

    def features(self, item: str, text: str) -> dict:
        task = TASKS_BY_KEY[item]
        return {"keyword_coverage": coverage(text, task.keywords), "vivid": count_markers(text, VIVID_WORDS),
                "informative": len(informative_segments(text)), "lines": nonempty_lines(text)}

    def capability_scores(self, features: Mapping) -> dict[str, float]:
        return {
            "intent_conformity": features["keyword_coverage"],
            "expressiveness": min(features["vivid"], 4) / 4,
            "readability": 1.0 if features["lines"] >= 3 else 0.0,
            "content_richness": min(features["informative"], 4) / 4,
        }

    def gold(self, scores: Mapping[str, float]) -> float:
        i, x = scores["intent_conformity"], scores["expressiveness"]
        return (2.0 * i + 1.5 * x * i + 1.0 * scores["readability"] + 1.0 * scores["content_richness"] * i
                + 0.2 * x)
