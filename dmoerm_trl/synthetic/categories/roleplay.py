"""Role-play: the user sets up a character, the assistant greets in character, then the user brings a problem.
Staying in character dominates, and it pays most together with empathy.

Capabilities (measured from the response text and the persona set up in the first user turn):

- ``character_setting_and_emotional_investment``: ``min(distinct signature words of the persona, 3) / 3``
- ``empathy_ability``: ``min(empathy markers, 2) / 2``
- ``proactivity``: 1 if the response asks a question, else 0
- ``content_richness``: ``min(informative segments without a signature word, 3) / 3`` (helpful advice)

Gold: ``2.0 character + 1.0 empathy + 0.8 proactivity + 0.4 content_richness + 1.2 character * empathy``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..text_features import EMPATHY_MARKERS, count_markers, count_questions, informative_segments
from .base import CategoryWorld, Conversation


@dataclass(frozen=True)
class Persona:
    key: str
    name: str  # identifies the persona in the conversation
    description: str
    greeting: str  # the assistant's first, in-character turn
    signature: tuple[str, ...]  # words that show the character
    lines: tuple[str, ...]  # in-character sentences, exactly one signature word each


@dataclass(frozen=True)
class Trouble:
    key: str
    message: str
    details: tuple[str, ...]  # advice: no signature word of any persona, no marker
    question: str


def _persona(key, name, description, greeting, signature, lines) -> Persona:
    return Persona(key, name, description, greeting, tuple(signature.split(", ")), tuple(lines))


PERSONAS = (
    _persona("pirate", "Captain Redbeard", "a pirate captain", "Arr, welcome aboard, matey! What troubles ye?",
             "arr, matey, ship, treasure, sea",
             ["Arr, no sailor gets left behind on my watch.",
              "Listen well, matey, this old salt has seen worse storms.",
              "My ship has weathered many a dark night.", "We will find our way like we always find the treasure."]),
    _persona("knight", "Sir Galahad", "a noble knight of the round table",
             "Greetings, good traveller. How may a knight serve you this day?",
             "sword, honour, quest, realm, steed",
             ["By my sword, I shall stand beside you.", "There is no honour in giving up now.",
              "Every quest has its darkest hour before the dawn.",
              "My steed and I have crossed harder roads than this."]),
    _persona("station_ai", "ORION", "the calm computer of a space station",
             "Hello. ORION online and listening. How can I assist you today?",
             "systems, protocol, orbit, crew, calculating",
             ["My systems are fully focused on your situation.",
              "Standard protocol says we take this one step at a time.",
              "We have been in orbit through far stranger events.",
              "Calculating the best course of action for you now."]),
    _persona("wizard", "Merlin", "a wise old wizard",
             "Ah, a visitor! Come, sit by the fire and tell an old wizard your worries.",
             "spell, magic, potion, wand, stars",
             ["No spell is needed to see that you are troubled.", "There is a kind of magic in simply starting again.",
              "A calming potion of chamomile never hurts.", "Let me wave my wand over the matter and think."]),
    _persona("detective", "Detective Jack Malone", "a hard-boiled private eye",
             "Malone here. Take a seat and tell me what's eating you.",
             "case, clue, kid, city, hunch",
             ["Every case looks hopeless at the start.", "There is always a clue if you look closely enough.",
              "Listen, kid, I have been in tighter spots.", "I have a hunch this will turn out fine."]),
    _persona("chef", "Chef Lucia", "a cheerful Italian chef",
             "Benvenuto! Come in, come in, the sauce is on the stove.",
             "kitchen, recipe, pasta, mamma mia, basil",
             ["In my kitchen, we fix everything one step at a time.",
              "Every problem has a recipe, you just need the right steps.",
              "Mamma mia, let us slow down and breathe together.",
              "There is nothing a warm plate of pasta cannot help."]),
    _persona("sheriff", "Sheriff Dusty Cole", "a cowboy sheriff in an old western town",
             "Well now, stranger. What brings you to my office?",
             "partner, howdy, ranch, saddle, sheriff",
             ["Howdy, let us sort this out together.", "Listen here, partner, nobody rides alone in this town.",
              "Back on the ranch we learned to face trouble early.",
              "Get back in the saddle and we will work it out."]),
    _persona("owl", "Professor Hoot", "a wise owl who teaches in the forest",
             "Welcome, young one. Perch here and tell me what puzzles you.",
             "hoo, feathers, nest, branch, owl",
             ["Hoo, let us think about this carefully.", "Ruffled feathers settle when we take a moment.",
              "Even the safest nest gets shaken by the wind.",
              "From my branch I see more paths than you might think."]),
)
PERSONAS_BY_KEY = {persona.key: persona for persona in PERSONAS}

TROUBLES = (
    Trouble("lost", "I think I'm lost and I don't know how to get home.",
            ("Retracing the last few turns often brings back familiar landmarks.",
             "Asking someone nearby for directions is a smart move.",
             "Staying in one well-lit place also makes you easy to find."), "What was the last thing you recognised?"),
    Trouble("exam", "I have a big exam tomorrow and I'm scared I'll fail.",
            ("A short review of the main topics tonight is enough.",
             "Sleep will help you remember far more than cramming.",
             "Reading each question twice prevents silly mistakes."), "Which subject is it?"),
    Trouble("friend", "My friend stopped talking to me and I don't know why.",
            ("A gentle message asking if everything is fine can open the door.",
             "People sometimes pull away because of their own troubles.",
             "Giving them a few days can also help."), "When did you last speak?"),
    Trouble("cooking", "I want to learn to cook but I always burn everything.",
            ("Lower heat gives you more time to react.", "Simple dishes like omelettes are great for practice.",
             "Reading all the steps before starting avoids surprises."), "What did you try to make last time?"),
    Trouble("job", "I can't decide whether to take a new job in another town.",
            ("Writing a list of pros and cons makes the choice clearer.",
             "Visiting the place for a weekend tells you a lot.",
             "Talking to people who already work there helps too."), "What excites you most about the new job?"),
    Trouble("mug", "My little brother broke my favourite mug.",
            ("Accidents happen even with the best intentions.", "Some glues can repair ceramic surprisingly well.",
             "A new mug might become a new favourite."), "Did he apologise?"),
    Trouble("speech", "I have to give a speech at school and I'm nervous.",
            ("Practising in front of a mirror builds confidence.", "Starting with a short story grabs attention.",
             "Slow breathing before you begin calms the nerves."), "What is the speech about?"),
    Trouble("plants", "I keep forgetting to water my plants.",
            ("A reminder on your phone can solve this quickly.", "Some plants need water only once a week.",
             "Grouping them in one spot makes them easier to notice."), "Which plants do you have?"),
    Trouble("picnic", "It's raining and my picnic is ruined.",
            ("An indoor picnic on the living room floor can be just as fun.",
             "The food will taste just as good under a roof.",
             "Checking the forecast for next weekend gives a new plan."), "What food did you pack?"),
    Trouble("kitten", "I found a stray kitten outside my door.",
            ("A warm box with a towel makes a good bed for now.", "A local shelter can check if it has a chip.",
             "Small bowls of water and plain food help it settle."), "Does it seem healthy?"),
)
TROUBLES_BY_KEY = {trouble.key: trouble for trouble in TROUBLES}

SETUPS = ("Let's play a role-play game. You are {name}, {description}. Stay in character.",
          "Pretend you are {name}, {description}, and answer in character.",
          "Role-play time: you are {name}, {description}.")
EMPATHY_OPENERS = ("That sounds really hard.", "I understand how you feel.", "I can imagine how worrying that is.",
                   "I hear you.", "That must be difficult.")


class Roleplay(CategoryWorld):
    name = "roleplay"
    zh_name = "角色扮演"
    capabilities = ("character_setting_and_emotional_investment", "empathy_ability", "proactivity", "content_richness")
    descriptions: ClassVar[dict[str, str]] = {
        "character_setting_and_emotional_investment": "speaks like the assigned character, with its typical words",
        "empathy_ability": "acknowledges the user's feelings (that sounds..., I'm sorry..., congratulations...)",
        "proactivity": "keeps the conversation going by asking the user a question",
        "content_richness": "offers several informative sentences",
    }
    gold_formula = ("2.0 character_setting_and_emotional_investment + 1.0 empathy_ability + 0.8 proactivity "
                    "+ 0.4 content_richness + 1.2 character_setting_and_emotional_investment * empathy_ability")

    def anchors(self) -> dict[str, str]:
        return {persona.name: persona.key for persona in PERSONAS}

    def units(self) -> list[str]:
        return [f"{persona.key}/{trouble.key}" for persona in PERSONAS for trouble in TROUBLES]

    def final_user_messages(self):
        return [trouble.message for trouble in TROUBLES]

    def sample_conversation(self, unit: str, rng: random.Random, multi_turn_probability: float) -> Conversation:
        persona_key, trouble_key = unit.split("/")
        persona, trouble = PERSONAS_BY_KEY[persona_key], TROUBLES_BY_KEY[trouble_key]
        setup = rng.choice(SETUPS).format(name=persona.name, description=persona.description)
        return Conversation(self.name, (setup, trouble.message), (persona.greeting,), persona_key, unit)

    def sample_plan(self, rng: random.Random) -> dict:
        while True:
            plan = {"empathy": rng.choice([0, 1, 2]), "persona": rng.randint(0, 3), "details": rng.randint(0, 3),
                    "question": rng.random() < 0.5}
            if plan["empathy"] or plan["persona"] or plan["details"] or plan["question"]:
                return plan

    def render(self, conversation: Conversation, plan: Mapping, rng: random.Random) -> str:
        persona = PERSONAS_BY_KEY[conversation.item]
        trouble = TROUBLES_BY_KEY[conversation.unit.split("/")[1]]
        middle = rng.sample(persona.lines, plan["persona"]) + rng.sample(trouble.details, plan["details"])
        rng.shuffle(middle)
        tail = [trouble.question] if plan["question"] else []
        return " ".join(rng.sample(EMPATHY_OPENERS, plan["empathy"]) + middle + tail)

    def planned_features(self, plan: Mapping) -> dict:
        return {"signature": plan["persona"], "empathy": plan["empathy"], "questions": int(plan["question"]),
                "advice": plan["details"]}

    def features(self, item: str, text: str) -> dict:
        persona = PERSONAS_BY_KEY[item]
        advice = [s for s in informative_segments(text) if count_markers(s, persona.signature) == 0]
        return {"signature": count_markers(text, persona.signature), "empathy": count_markers(text, EMPATHY_MARKERS),
                "questions": count_questions(text), "advice": len(advice)}

    def capability_scores(self, features: Mapping) -> dict[str, float]:
        return {
            "character_setting_and_emotional_investment": min(features["signature"], 3) / 3,
            "empathy_ability": min(features["empathy"], 2) / 2,
            "proactivity": 1.0 if features["questions"] else 0.0,
            "content_richness": min(features["advice"], 3) / 3,
        }

    def gold(self, scores: Mapping[str, float]) -> float:
        m, e = scores["character_setting_and_emotional_investment"], scores["empathy_ability"]
        return 2.0 * m + 1.0 * e + 0.8 * scores["proactivity"] + 0.4 * scores["content_richness"] + 1.2 * m * e
