"""Chit-chat: the user shares news or a worry. Empathy dominates the gold score; long informative replies hurt.

Capabilities (measured from the response text and the message's topic keyword):

- ``empathy_ability``: ``min(empathy markers, 2) / 2`` ("that sounds", "i'm sorry", "congratulations"...)
- ``proactivity``: 1 if the response asks a question, else 0
- ``conversational_sense``: ``0.5 * (names the user's topic) + 0.5 * (fewer than 2 list lines)``
- ``content_richness``: ``min(informative segments, 4) / 4``

Gold: ``2.5 empathy + 1.2 proactivity + 1.0 conversational_sense - 0.8 content_richness + 0.8 empathy * proactivity``
(in chit-chat more content is *worse*, the opposite of the other categories).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..text_features import EMPATHY_MARKERS, count_markers, count_questions, coverage, informative_segments, list_lines
from .base import CategoryWorld, Conversation, greeting_turn


@dataclass(frozen=True)
class Situation:
    key: str
    message: str
    mood: str  # "pos" or "neg": which empathy openers fit
    keywords: tuple[str, ...]
    reaction: str  # names the topic (a keyword), no marker
    details: tuple[str, ...]  # informative, no keyword, no marker
    question: str


def _situation(key, message, mood, keywords, reaction, details, question) -> Situation:
    return Situation(key, message, mood, tuple(keywords.split(", ")), reaction, tuple(details), question)


SITUATIONS = (
    _situation("hike", "I just got back from a long hike and my legs are killing me.", "neg", "hike|hiking",
               "A long hike like that is a real workout for the body.",
               ["Stretching tonight will help with the soreness.", "A warm bath can loosen tight muscles.",
                "Drinking plenty of water speeds up recovery."], "Where did you go?"),
    _situation("driving_test", "I failed my driving test this morning.", "neg", "driving test",
               "A driving test is stressful for almost everyone.",
               ["Many people pass on their second attempt.", "Examiners often look for the same few mistakes.",
                "A couple of extra lessons usually make a big difference."],
                "Do you know when you can book the next one?"),
    _situation("promotion", "I got promoted at work today!", "pos", "promoted|promotion",
               "Getting promoted shows that your hard work was noticed.",
               ["New responsibilities can feel strange for the first few weeks.",
                "It is a good moment to set goals for the next year.",
                "Celebrating small wins keeps motivation high."],
               "What will your new role involve?"),
    _situation("puppy", "We adopted a puppy over the weekend.", "pos", "puppy|puppies",
               "A puppy brings so much energy into a home.",
               ["The first weeks are the best time to start gentle training.",
                "Short walks are better than long ones at that age.", "Chew toys save a lot of shoes and furniture."],
               "What did you name it?"),
    _situation("rain", "It has been raining all week and I feel so gloomy.", "neg", "rain|raining|rainy",
               "Days of rain can really drag your mood down.",
               ["Bright indoor light helps a little on dark days.", "A short walk outside still lifts the spirits.",
                "Planning something cozy for the evening gives you something to look forward to."],
               "Is there anything fun planned for the weekend?"),
    _situation("dinner", "I cooked dinner for my whole family for the first time.", "pos", "dinner",
               "Making dinner for a whole family is a big job.",
               ["Simple dishes often turn out the best.", "Cooking for others gets easier every time.",
                "Leftovers make the next day's lunch easy."], "What did you make?"),
    _situation("moving", "I'm moving to a new city next month and I'm nervous.", "neg", "city",
               "Starting over in a new city is a big change.",
               ["Exploring the neighbourhood early makes it feel familiar.",
                "Local clubs are a good way to meet people.",
                "The first month is usually the hardest part."], "Which place are you moving to?"),
    _situation("marathon", "I finished my first marathon yesterday!", "pos", "marathon",
               "Finishing a marathon takes months of training.",
               ["Rest and light stretching help the body recover.",
                "Most runners feel sore for a few days afterwards.",
                "Eating enough protein helps repair the muscles."], "How long did it take you?"),
    _situation("insomnia", "I couldn't sleep at all last night.", "neg", "sleep|slept|sleeping|insomnia",
               "A night without sleep leaves everything feeling harder.",
               ["A short nap after lunch can take the edge off.", "Caffeine late in the day often makes it worse.",
                "Dimming screens an hour before bed helps many people."], "Is something keeping you up?"),
    _situation("birthday", "Today is my birthday and my friends threw me a surprise party.", "pos", "birthday",
               "A surprise party on your birthday is such a thoughtful gift.",
               ["Friends who plan surprises clearly care a lot.",
                "Photos from nights like that become great memories.",
                "Cake tastes better when someone else baked it."], "Were you really surprised?"),
    _situation("lost_phone", "I lost my phone on the bus today.", "neg", "phone",
               "Losing a phone is such a hassle these days.",
               ["Bus companies often keep a lost property office.", "Location tracking might show where it is.",
                "Changing important passwords is a sensible precaution."], "Did you call the bus company yet?"),
    _situation("guitar", "I've started learning to play the guitar.", "pos", "guitar",
               "Learning the guitar is a lovely hobby to pick up.",
               ["Sore fingertips are normal during the first weeks.",
                "Fifteen minutes of daily practice beats one long session.",
                "Simple songs with three chords are a great start."], "What kind of music do you want to play?"),
    _situation("argument", "My best friend and I had a big argument.", "neg", "argument|fight|argue",
               "An argument with someone close can weigh on you for days.",
               ["Giving each other a little space often helps.", "A calm conversation later can clear things up.",
                "Writing down your thoughts first makes them easier to say."],
                "Do you want to talk about what happened?"),
    _situation("garden", "The tomatoes in my garden are finally ripe.", "pos", "garden",
               "A garden full of ripe tomatoes is a great reward.",
               ["Picking them regularly encourages more fruit.", "Fresh sauce is an easy way to use a big harvest.",
                "They taste best at room temperature."], "What else are you growing?"),
    _situation("interview", "I have a job interview tomorrow and I'm really nervous.", "neg", "interview",
               "An interview can make anyone feel on edge.",
               ["Preparing two or three stories about past work helps a lot.",
                "Researching the company shows real interest.",
                "A good night's rest matters more than last-minute cramming."], "What is the position?"),
    _situation("cold", "I caught a cold and I'm stuck in bed.", "neg", "cold|flu",
               "A cold can knock you out for a few days.",
               ["Warm tea with honey soothes a sore throat.", "Rest is the fastest way to get better.",
                "Keeping tissues and water nearby saves trips."], "Do you have someone to bring you soup?"),
    _situation("vacation", "I just booked a vacation to Portugal.", "pos", "Portugal",
               "Portugal has beautiful coastlines and old towns.",
               ["The trams of Lisbon are a fun way to see the hills.",
                "The local pastries are famous for good reason.",
                "Spring and autumn are pleasant times to travel."], "How long will you stay?"),
    _situation("novel", "I finished reading a really long novel last night.", "pos", "novel",
               "Reaching the end of a long novel is so satisfying.",
               ["Big stories often stay with you for weeks.", "Book clubs are a fun place to talk about endings.",
                "A short read next can be a nice change of pace."], "Which one was it?"),
    _situation("traffic", "I was stuck in traffic for two hours today.", "neg", "traffic",
               "Two hours in traffic would drain anyone.",
               ["A good podcast can make long drives easier.",
                "Leaving a little earlier sometimes avoids the worst jams.",
                "Some navigation apps suggest quieter routes."], "Did you make it on time in the end?"),
    _situation("baby", "My sister just had a baby girl.", "pos", "baby",
               "A new baby in the family is a big moment.",
               ["The first weeks are busy for new parents.",
                "Small practical gifts like meals are often the most welcome.",
                "Aunts and uncles often become favourite people later."], "Have you met her yet?"),
    _situation("roommate", "I've been feeling a bit lonely since my roommate moved out.", "neg", "roommate",
               "A roommate moving out leaves a quiet house.",
               ["Inviting a friend over for dinner can brighten a week.",
                "Joining a class is a good way to meet people.",
                "Regular calls with family help fill the gap."],
                "Are you thinking of finding someone new to live with?"),
    _situation("painting", "I sold my first painting at a local fair.", "pos", "painting|painted",
               "Selling a painting means someone loved your art enough to take it home.",
               ["Local fairs are a great way to find buyers.", "Many artists remember their first sale for years.",
                "Taking photos of your work helps build a portfolio."], "What was the picture of?"),
    _situation("laptop", "My laptop stopped working right before a deadline.", "neg", "laptop",
               "A laptop failing before a deadline is terrible timing.",
               ["Cloud backups may still have your latest files.", "A library computer could get you through tonight.",
                "Explaining the situation early often buys extra time."], "Did you save your work somewhere?"),
    _situation("bike", "I bought a new bike to ride to work.", "pos", "bike|bicycle|cycling",
               "Riding a bike to work is great exercise.",
               ["A good lock is worth the extra money.", "Lights make early morning rides much safer.",
                "Quiet side streets are often more pleasant than main roads."], "How far is the ride?"),
    _situation("snow", "It snowed last night and everything looks magical.", "pos", "snow|snowed|snowing",
               "Fresh snow makes the whole neighbourhood look new.",
               ["Early mornings after a storm are often perfectly quiet.",
                "A warm drink tastes best after time outside.",
                "Building something in the yard is fun at any age."], "Are you going outside to enjoy it?"),
    _situation("exams", "I passed my final exams!", "pos", "exams|exam",
               "Passing final exams is the result of a lot of studying.",
               ["Taking a real break now will feel great.", "The skills you built will keep paying off.",
                "Marking the moment with friends makes it special."], "What are you going to do next?"),
    _situation("sick_cat", "My cat has been sick all week.", "neg", "cat|kitty",
               "Watching a cat feel unwell is really worrying.",
               ["A vet can often find the cause with a quick check.", "Keeping water and food close to the bed helps.",
                "Quiet and warmth help animals rest."], "Has a vet seen her yet?"),
    _situation("bored", "I'm so bored this weekend, there's nothing to do.", "neg", "weekend",
               "A quiet weekend can feel very long.",
               ["Museums often have free entry on certain days.",
                "A long walk somewhere new can be a small adventure.",
                "Cooking a new recipe fills an afternoon nicely."], "What do you usually enjoy doing?"),
    _situation("wedding", "I'm getting married in the spring!", "pos", "married|wedding",
               "Getting married in the spring means flowers everywhere.",
               ["Booking venues early gives you more choice.",
                "Many couples keep the guest list small to reduce stress.",
                "A tasting day with the caterer is a fun part of planning."], "Have you picked a date?"),
    _situation("rejection", "My story got rejected by a magazine again.", "neg", "story|stories",
               "A rejected story still shows you are putting your work out there.",
               ["Many famous writers collected dozens of rejections.",
                "Editors often turn work down for reasons of fit, not quality.",
                "Sending it to the next place right away keeps momentum."], "Which magazine are you trying next?"),
)
SITUATIONS_BY_KEY = {situation.key: situation for situation in SITUATIONS}

# Each opener contains exactly one empathy marker.
EMPATHY_OPENERS = {
    "neg": ("That sounds really hard.", "I'm sorry you're dealing with this.", "I understand how frustrating that is.",
            "I can imagine how you feel.", "I hear you.", "That must be exhausting."),
    "pos": ("That sounds amazing.", "Congratulations, that is great news.", "How wonderful.",
            "I'm so glad to hear that.", "I'm so happy for you.", "You must be thrilled."),
}
MESSAGE_PREFIXES = ("", "Hey. ", "So, ")


class Chitchat(CategoryWorld):
    name = "chitchat"
    zh_name = "闲聊"
    capabilities = ("empathy_ability", "proactivity", "conversational_sense", "content_richness")
    descriptions: ClassVar[dict[str, str]] = {
        "empathy_ability": "acknowledges the user's feelings (that sounds..., I'm sorry..., congratulations...)",
        "proactivity": "keeps the conversation going by asking the user a question",
        "conversational_sense": "reacts to what the user said, in plain conversational form rather than a list",
        "content_richness": "offers several informative sentences",
    }
    gold_formula = ("2.5 empathy_ability + 1.2 proactivity + 1.0 conversational_sense - 0.8 content_richness "
                    "+ 0.8 empathy_ability * proactivity")

    def anchors(self) -> dict[str, str]:
        return {situation.message: situation.key for situation in SITUATIONS}

    def units(self) -> list[str]:
        return [situation.key for situation in SITUATIONS]

    def final_user_messages(self):
        return [prefix + s.message for s in SITUATIONS for prefix in MESSAGE_PREFIXES]

    def sample_conversation(self, unit: str, rng: random.Random, multi_turn_probability: float) -> Conversation:
        message = rng.choice(MESSAGE_PREFIXES) + SITUATIONS_BY_KEY[unit].message
        if rng.random() < multi_turn_probability:
            user, assistant = greeting_turn(rng)
            return Conversation(self.name, (user, message), (assistant,), unit, unit)
        return Conversation(self.name, (message,), (), unit, unit)

    def sample_plan(self, rng: random.Random) -> dict:
        while True:  # never an empty response
            plan = {"empathy": rng.choice([0, 1, 2]), "reaction": rng.random() < 0.5, "details": rng.randint(0, 3),
                    "question": rng.random() < 0.5, "bullets": rng.random() < 0.3}
            if plan["empathy"] or plan["reaction"] or plan["details"] or plan["question"]:
                return plan

    def render(self, conversation: Conversation, plan: Mapping, rng: random.Random) -> str:
        situation = SITUATIONS_BY_KEY[conversation.item]
        head = rng.sample(EMPATHY_OPENERS[situation.mood], plan["empathy"])
        head += [situation.reaction] if plan["reaction"] else []
        details = rng.sample(situation.details, plan["details"])
        tail = [situation.question] if plan["question"] else []
        if plan["bullets"] and len(details) >= 2:
            lines = [" ".join(head)] if head else []
            lines += [f"- {detail}" for detail in details] + ([" ".join(tail)] if tail else [])
            return "\n".join(lines)
        return " ".join(head + details + tail)

    def planned_features(self, plan: Mapping) -> dict:
        return {"empathy": plan["empathy"], "keyword_coverage": 1.0 if plan["reaction"] else 0.0,
                "informative": int(plan["reaction"]) + plan["details"], "questions": int(plan["question"]),
                "list_lines": plan["details"] if plan["bullets"] and plan["details"] >= 2 else 0}

    def features(self, item: str, text: str) -> dict:
        situation = SITUATIONS_BY_KEY[item]
        return {"empathy": count_markers(text, EMPATHY_MARKERS), "keyword_coverage": coverage(text,
                                                                                              situation.keywords),
                "informative": len(informative_segments(text)), "questions": count_questions(text),
                "list_lines": list_lines(text)}

    def capability_scores(self, features: Mapping) -> dict[str, float]:
        return {
            "empathy_ability": min(features["empathy"], 2) / 2,
            "proactivity": 1.0 if features["questions"] else 0.0,
            "conversational_sense": 0.5 * (features["keyword_coverage"] > 0) + 0.5 * (features["list_lines"] < 2),
            "content_richness": min(features["informative"], 4) / 4,
        }

    def gold(self, scores: Mapping[str, float]) -> float:
        e, p = scores["empathy_ability"], scores["proactivity"]
        return (2.5 * e + 1.2 * p + 1.0 * scores["conversational_sense"] - 0.8 * scores["content_richness"]
                + 0.8 * e * p)
