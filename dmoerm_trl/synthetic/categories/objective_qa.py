"""Objective QA: factual questions with one right answer. Correctness dominates the gold score.

Capabilities (measured from the response text and the question's fact):

- ``correctness``: 1 the right answer and no listed wrong one; 0.5 both (a hedge); 0.2 neither; 0 a wrong one only
- ``objectiveness``: ``1 - min(emotive, 2) / 2``, emotive = empathy markers + ``!`` characters
- ``reasoning_ability``: 1 if a reasoning connective (``because``, ``therefore``...) occurs, else 0
- ``depth_of_knowledge``: ``clip((informative segments - 1 - reasoning) / 3)``: supporting facts beyond the answer
  and one explanation
- ``question_specific``: fraction of the question's keywords the response names

Gold: ``3 correctness + 1 question_specific + 0.6 reasoning + 0.5 objectiveness + depth * (1.5 correctness - 0.5)``
(details help a right answer and hurt a wrong one: an interaction a linear mix cannot express).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..text_features import (
    EMPATHY_MARKERS,
    REASONING_CONNECTIVES,
    clip01,
    contains_phrase,
    count_exclamations,
    count_markers,
    coverage,
    informative_segments,
    list_lines,
)
from .base import CategoryWorld, Conversation, greeting_turn


@dataclass(frozen=True)
class Fact:
    key: str
    question: str
    topic_phrase: str  # names the subject, contains every keyword
    keywords: tuple[str, ...]
    statement: str  # the full answer sentence, "{}" = the answer
    answer: tuple[str, ...]  # display form first, then aliases
    wrong: tuple[tuple[str, ...], ...]  # wrong answers, each display form first
    reason: str  # completes "This is because ..."
    details: tuple[str, ...]  # supporting facts: no keyword, answer or marker in them


def _fact(key, question, topic_phrase, keywords, statement, answer, wrong, reason, details) -> Fact:
    return Fact(key, question, topic_phrase, tuple(keywords.split(", ")), statement, tuple(answer.split("|")),
                tuple(tuple(w.split("|")) for w in wrong), reason, tuple(details))


FACTS = (
    _fact("capital_france", "What is the capital of France?", "the capital of France", "capital, France",
          "The capital of France is {}.", "Paris", ["Lyon", "Marseille"],
          "the national government and parliament sit there",
          ["The city sits on the banks of the Seine.", "Its most famous landmark is an iron tower built in 1889.",
           "About two million people live within its city limits."]),
    _fact("capital_japan", "What is the capital of Japan?", "the capital of Japan", "capital, Japan",
          "The capital of Japan is {}.", "Tokyo", ["Kyoto", "Osaka"],
          "the emperor and the national government are based there",
          ["The metropolitan area is home to more than thirty million people.", "It was known as Edo before 1868.",
           "Its busiest crossing is next to Shibuya station."]),
    _fact("capital_australia", "What is the capital of Australia?", "the capital of Australia", "capital, Australia",
          "The capital of Australia is {}.", "Canberra", ["Sydney", "Melbourne"],
          "it was built as a compromise between two rival cities",
          ["The city was designed by the architects Walter and Marion Griffin.",
           "Parliament House opened there in 1988.",
           "It lies in its own federal territory."]),
    _fact("capital_canada", "What is the capital of Canada?", "the capital of Canada", "capital, Canada",
          "The capital of Canada is {}.", "Ottawa", ["Toronto", "Vancouver"],
          "Queen Victoria chose it as the seat of government in 1857",
          ["The city lies on the border between Ontario and Quebec.",
           "Its canal turns into a long skating rink in winter.",
           "The parliament buildings stand on a hill above the river."]),
    _fact("capital_italy", "What is the capital of Italy?", "the capital of Italy", "capital, Italy",
          "The capital of Italy is {}.", "Rome", ["Milan", "Florence"],
          "the parliament and the president are located there",
          ["The city has been inhabited for nearly three thousand years.",
           "It surrounds the independent state of Vatican City.",
           "The Colosseum once held tens of thousands of spectators."]),
    _fact("capital_egypt", "What is the capital of Egypt?", "the capital of Egypt", "capital, Egypt",
          "The capital of Egypt is {}.", "Cairo", ["Alexandria", "Luxor"],
          "it has been the seat of government for centuries",
          ["The city stretches along the banks of the Nile.", "The pyramids of Giza stand on its western edge.",
           "It is one of the largest cities in Africa."]),
    _fact("capital_brazil", "What is the capital of Brazil?", "the capital of Brazil", "capital, Brazil",
          "The capital of Brazil is {}.", "Brasilia|Brasília", ["Rio de Janeiro|Rio", "Sao Paulo|São Paulo"],
          "the government moved there in 1960 to develop the interior",
          ["The city was planned from scratch by Lucio Costa.", "Its layout seen from above resembles an airplane.",
           "Oscar Niemeyer designed many of its buildings."]),
    _fact("largest_planet", "Which planet is the largest in our solar system?", "the largest planet",
          "largest, planet",
          "The largest planet in our solar system is {}.", "Jupiter", ["Saturn", "Neptune"],
          "its mass is more than twice that of all the others combined",
          ["It is a gas giant made mostly of hydrogen and helium.",
           "Its Great Red Spot is a storm wider than the Earth.",
           "At least ninety moons orbit it."]),
    _fact("red_planet", "Which planet is known as the Red Planet?", "the Red Planet", "Red Planet",
          "The planet known as the Red Planet is {}.", "Mars", ["Venus", "Mercury"],
          "iron oxide dust covers its surface",
          ["Its tallest volcano, Olympus Mons, is about three times the height of Everest.",
           "A day there lasts about 24 hours and 37 minutes.", "Two small moons, Phobos and Deimos, orbit it."]),
    _fact("closest_star", "What is the closest star to the Earth?", "the closest star to the Earth", "closest, star",
          "The closest star to the Earth is {}.", "the Sun|Sun", ["Proxima Centauri|Proxima", "Sirius"],
          "all the others are light years away",
          ["Its light takes about eight minutes to reach us.", "It is roughly 4.6 billion years old.",
           "Its core reaches about fifteen million degrees Celsius."]),
    _fact("spider_legs", "How many legs does a spider have?", "the legs of a spider", "legs|leg, spider|spiders",
          "A spider has {} legs.", "eight|8", ["six|6", "ten|10"], "all arachnids share this body plan",
          ["Most species also have several pairs of eyes.", "They produce silk from glands called spinnerets.",
           "Only a few species are dangerous to humans."]),
    _fact("water_boiling", "At what temperature in Celsius does water boil at sea level?",
          "the boiling point of water at sea level", "water, sea level",
          "Water boils at {} degrees Celsius at sea level.", "100", ["90", "80"],
          "its vapour pressure then equals the pressure of the air",
          ["At higher altitudes the boiling point is lower.", "Adding salt raises the boiling point slightly.",
           "Pressure cookers raise the boiling point to cook food faster."]),
    _fact("author_romeo", "Who wrote Romeo and Juliet?", "the author of Romeo and Juliet", "Romeo, Juliet",
          "Romeo and Juliet was written by {}.", "William Shakespeare|Shakespeare",
          ["Charles Dickens|Dickens", "Christopher Marlowe|Marlowe"],
          "the earliest printed edition from 1597 credits him",
          ["He was born in Stratford-upon-Avon in 1564.", "He wrote around 37 plays and 154 sonnets.",
           "Many of his plays were performed at the Globe Theatre."]),
    _fact("mona_lisa", "Who painted the Mona Lisa?", "the painter of the Mona Lisa", "Mona Lisa",
          "The Mona Lisa was painted by {}.", "Leonardo da Vinci|Leonardo|da Vinci", ["Michelangelo", "Raphael"],
          "records of the merchant who ordered the portrait name him",
          ["The portrait hangs in the Louvre museum in Paris.", "It was probably started around 1503.",
           "The sitter is believed to be Lisa Gherardini."]),
    _fact("largest_ocean", "What is the largest ocean on Earth?", "the largest ocean on Earth", "largest, ocean",
          "The largest ocean on Earth is {}.", "the Pacific|Pacific", ["the Atlantic|Atlantic", "the Arctic|Arctic"],
          "it covers about a third of the surface of the planet",
          ["Its deepest point, the Mariana Trench, is nearly eleven kilometres deep.",
           "It stretches almost from pole to pole.",
           "Thousands of islands are scattered across it."]),
    _fact("longest_river", "What is the longest river in the world?", "the longest river in the world",
          "longest, river",
          "The longest river in the world is {}.", "the Nile|Nile", ["the Amazon|Amazon", "the Yangtze|Yangtze"],
          "it runs about 6,650 kilometres from its source to the sea",
          ["It flows north through eleven countries.", "Its floods made farming possible in ancient Egypt.",
           "It empties into the Mediterranean Sea."]),
    _fact("tallest_mountain", "What is the tallest mountain on Earth?", "the tallest mountain on Earth",
          "tallest|highest, mountain", "The tallest mountain on Earth is {}.", "Mount Everest|Everest", ["K2",
                                                                                                         "Kangchenjunga"],
          "its summit reaches 8,849 metres above sea level",
          ["It sits on the border between Nepal and China.",
           "Edmund Hillary and Tenzing Norgay first reached the top in 1953.",
           "Climbers call the area above 8,000 metres the death zone."]),
    _fact("gold_symbol", "What is the chemical symbol for gold?", "the chemical symbol for gold", "symbol, gold",
          "The chemical symbol for gold is {}.", "Au", ["Ag", "Gd"], "it comes from the Latin word aurum",
          ["Its atomic number is 79.", "It does not rust or tarnish in air.",
           "It is one of the densest metals known."]),
    _fact("water_formula", "What is the chemical formula of water?", "the chemical formula of water", "formula, water",
          "The chemical formula of water is {}.", "H2O", ["CO2", "H2O2"],
          "each molecule holds two hydrogen atoms and one oxygen atom",
          ["The molecule has a bent shape.",
           "It is the only common substance found naturally as solid, liquid and gas.",
           "Ice is less dense than its liquid form."]),
    _fact("continents", "How many continents are there?", "the number of continents", "continents|continent",
          "There are {} continents.", "seven|7", ["five|5", "six|6"],
          "most schools count Asia, Africa, Europe, Australia, Antarctica and the two Americas",
          ["Asia is the biggest by both area and population.", "Antarctica has no permanent residents.",
           "Some traditions merge the Americas into one."]),
    _fact("leap_year", "How many days are in a leap year?", "the days in a leap year", "days, leap year",
          "A leap year has {} days.", "366", ["365", "364"], "an extra day is added to February",
          ["It happens roughly once every four years.", "The extra date is the 29th of February.",
           "Years divisible by 100 are skipped unless divisible by 400."]),
    _fact("moon_walk", "Who was the first person to walk on the Moon?", "the first person on the Moon", "first, Moon",
          "The first person to walk on the Moon was {}.", "Neil Armstrong|Armstrong", ["Buzz Aldrin|Aldrin",
                                                                                       "Yuri Gagarin|Gagarin"],
          "he stepped out of the lunar module before his crewmate",
          ["The landing took place in July 1969.", "The mission was called Apollo 11.",
           "About 600 million people watched the broadcast."]),
    _fact("fastest_animal", "What is the fastest land animal?", "the fastest land animal", "fastest, animal",
          "The fastest land animal is {}.", "the cheetah|cheetah", ["the lion|lion", "the antelope|antelope"],
          "its long legs and flexible spine let it reach about 110 kilometres per hour",
          ["It can only keep up its top speed for a short sprint.", "Its black tear marks reduce glare from the sun.",
           "Most of them live in the savannas of Africa."]),
    _fact("largest_mammal", "What is the largest mammal?", "the largest mammal", "largest, mammal",
          "The largest mammal is {}.", "the blue whale|blue whale", ["the elephant|elephant", "the giraffe|giraffe"],
          "adults can weigh more than 150 tonnes",
          ["Its heart is about the size of a small car.", "It feeds mostly on tiny krill.",
           "Its calls can travel hundreds of kilometres under water."]),
    _fact("photosynthesis", "Which gas do plants absorb from the air for photosynthesis?",
          "the gas plants use for photosynthesis", "plants|plant, photosynthesis",
          "Plants absorb {} from the air for photosynthesis.", "carbon dioxide|CO2", ["oxygen", "nitrogen"],
          "they turn it into sugar using energy from sunlight",
          ["The process takes place in the chloroplasts of leaf cells.",
           "Chlorophyll gives leaves their green colour.",
           "The main by-product leaves through tiny pores called stomata."]),
    _fact("human_bones", "How many bones are in the adult human body?", "the bones of the adult human body",
          "bones|bone, human", "The adult human body has {} bones.", "206", ["212", "180"],
          "many smaller ones fuse together during childhood",
          ["The smallest one is the stirrup in the middle ear.", "The femur in the thigh is the longest.",
           "More than half of them are in the hands and feet."]),
    _fact("currency_japan", "What is the currency of Japan?", "the currency of Japan", "currency, Japan",
          "The currency of Japan is {}.", "the yen|yen", ["the yuan|yuan", "the ringgit|ringgit"],
          "it was adopted by the Meiji government in 1871",
          ["Its symbol is a Y with two horizontal bars.", "Coins come in six denominations.",
           "The largest note shows the educator Fukuzawa Yukichi."]),
    _fact("largest_desert", "What is the largest hot desert in the world?", "the largest hot desert",
          "largest, desert",
          "The largest hot desert in the world is {}.", "the Sahara|Sahara", ["the Gobi|Gobi",
                                                                              "the Kalahari|Kalahari"],
          "it covers about nine million square kilometres",
          ["It spans much of North Africa.", "Some of its dunes are taller than 150 metres.",
           "It was green and wet about six thousand years ago."]),
    _fact("telephone", "Who is credited with inventing the telephone?", "the inventor of the telephone",
          "telephone", "{} is credited with inventing the telephone.",
          "Alexander Graham Bell|Graham Bell|Bell", ["Thomas Edison|Edison", "Nikola Tesla|Tesla"],
          "he received the first patent for it in 1876",
          ["His first call was to his assistant Thomas Watson.", "He was born in Edinburgh, Scotland.",
           "He also worked on teaching deaf students to speak."]),
    _fact("square_root", "What is the square root of 81?", "the square root of 81", "square root, 81",
          "The square root of 81 is {}.", "9|nine", ["8|eight", "7|seven"],
          "multiplying that number by itself gives the original value",
          ["The negative value also solves the equation.", "Perfect squares like this have whole-number roots.",
           "Any root can be checked quickly by squaring it."]),
    _fact("hardest_substance", "What is the hardest natural substance?", "the hardest natural substance",
          "hardest, natural", "The hardest natural substance is {}.", "diamond", ["quartz", "granite"],
          "its carbon atoms are locked in a rigid crystal lattice",
          ["It scores 10 on the Mohs scale.", "It forms deep in the Earth under extreme pressure.",
           "It also conducts heat extremely well."]),
    _fact("giza", "In which country are the pyramids of Giza?", "the pyramids of Giza", "pyramids, Giza",
          "The pyramids of Giza are in {}.", "Egypt", ["Mexico", "Sudan"],
          "they were built for pharaohs of the Old Kingdom",
          ["The largest was built for the pharaoh Khufu.", "They are about 4,500 years old.",
           "The Great Sphinx stands nearby."]),
    _fact("heart", "Which organ pumps blood through the human body?", "the organ that pumps blood", "organ, blood",
          "The organ that pumps blood through the body is {}.", "the heart|heart", ["the liver|liver",
                                                                                    "the lungs|lungs"],
          "its muscular walls contract about seventy times a minute",
          ["It has four chambers.", "It beats around 100,000 times a day.",
           "Its own supply comes from the coronary arteries."]),
    _fact("native_speakers", "Which language has the most native speakers?",
          "the language with the most native speakers",
          "language, native speakers", "The language with the most native speakers is {}.",
          "Mandarin Chinese|Mandarin", ["English", "Spanish"], "close to a billion people grow up speaking it",
          ["Its words carry one of four main tones.", "It is written with characters rather than an alphabet.",
           "It is spoken officially in China and Taiwan."]),
    _fact("freezing_fahrenheit", "What is the freezing point of water in Fahrenheit?",
          "the freezing point in Fahrenheit", "freezing, Fahrenheit",
          "The freezing point of water is {} degrees Fahrenheit.", "32", ["0", "212"],
          "the scale was defined with that value for melting ice",
          ["On the Celsius scale this is zero degrees.", "Salt water stays liquid at a lower temperature.",
           "The scale was proposed by a German physicist in 1724."]),
    _fact("relativity", "Who developed the theory of general relativity?", "the theory of general relativity",
          "relativity", "The theory of general relativity was developed by {}.", "Albert Einstein|Einstein",
          ["Isaac Newton|Newton", "Niels Bohr|Bohr"], "he published the field equations in 1915",
          ["It describes gravity as the curvature of spacetime.", "It predicted the bending of starlight by the Sun.",
           "He received the Nobel Prize in 1921 for other work."]),
)
FACTS_BY_KEY = {fact.key: fact for fact in FACTS}

QUESTION_PREFIXES = ("", "Quick question: ", "I'm studying for a quiz. ", "Can you help me with something? ")
EXCLAIM_OPENERS = ("Great question!", "Oh, I love this one!", "What a fun thing to ask!")
EMPATHY_OPENERS = ("I understand why you are curious.", "I can imagine this comes up a lot.",
                   "I hear you, this one confuses many people.")
TERSE_ANSWERS = ("The answer is {}.", "That would be {}.", "I believe it is {}.")
NO_ANSWERS = ("I am not completely sure about that one.", "That is hard to say without checking.")
REASON_TEMPLATES = ("This is because {}.", "That is because {}.")
CORRECTNESS = {"correct": 1.0, "hedged": 0.5, "none": 0.2, "wrong": 0.0}
ANSWER_WEIGHTS = {"correct": 0.4, "wrong": 0.3, "hedged": 0.15, "none": 0.15}


class ObjectiveQA(CategoryWorld):
    name = "objective_qa"
    zh_name = "客观知识问答"
    capabilities = ("correctness", "objectiveness", "reasoning_ability", "depth_of_knowledge", "question_specific")
    descriptions: ClassVar[dict[str, str]] = {
        "correctness": "states the right answer, and no wrong one",
        "objectiveness": "stays neutral and factual, without exclamations or emotional remarks",
        "reasoning_ability": "explains why the answer is right (because, therefore...)",
        "depth_of_knowledge": "adds supporting facts beyond the bare answer",
        "question_specific": "names the subject the question asks about",
    }
    gold_formula = ("3.0 correctness + 1.0 question_specific + 0.6 reasoning_ability + 0.5 objectiveness "
                    "+ depth_of_knowledge * (1.5 correctness - 0.5)")

    def anchors(self) -> dict[str, str]:
        return {fact.question: fact.key for fact in FACTS}

    def units(self) -> list[str]:
        return [fact.key for fact in FACTS]

    def final_user_messages(self):
        return [prefix + fact.question for fact in FACTS for prefix in QUESTION_PREFIXES]

    def sample_conversation(self, unit: str, rng: random.Random, multi_turn_probability: float) -> Conversation:
        question = rng.choice(QUESTION_PREFIXES) + FACTS_BY_KEY[unit].question
        if rng.random() < multi_turn_probability:
            user, assistant = greeting_turn(rng)
            return Conversation(self.name, (user, question), (assistant,), unit, unit)
        return Conversation(self.name, (question,), (), unit, unit)

    def sample_plan(self, rng: random.Random) -> dict:
        answer = rng.choices(list(ANSWER_WEIGHTS), weights=list(ANSWER_WEIGHTS.values()))[0]
        return {"answer": answer, "topic": rng.random() < 0.5, "emotive": rng.choices([0, 1, 2], [0.5, 0.3, 0.2])[0],
                "reason": rng.random() < 0.5, "details": rng.randint(0, 3), "bullets": rng.random() < 0.25}

    def _answer_sentence(self, fact: Fact, plan: Mapping, rng: random.Random) -> str:
        wrong = rng.choice(fact.wrong)[0]
        if plan["answer"] == "none":
            return f"I am not completely sure about {fact.topic_phrase}." if plan["topic"] else rng.choice(NO_ANSWERS)
        if plan["answer"] == "hedged":
            first, second = rng.sample([fact.answer[0], wrong], 2)
            if plan["topic"]:
                return _capitalize(fact.statement.format(f"either {first} or {second}"))
            return f"It is either {first} or {second}, I am not sure which."
        value = fact.answer[0] if plan["answer"] == "correct" else wrong
        sentence = fact.statement if plan["topic"] else rng.choice(TERSE_ANSWERS)
        return _capitalize(sentence.format(value))

    def render(self, conversation: Conversation, plan: Mapping, rng: random.Random) -> str:
        fact = FACTS_BY_KEY[conversation.item]
        openers = []
        if plan["emotive"] >= 1:
            openers.append(rng.choice(EXCLAIM_OPENERS if plan["emotive"] == 2 or rng.random() < 0.5
                                      else EMPATHY_OPENERS))
        if plan["emotive"] == 2:
            openers.append(rng.choice(EMPATHY_OPENERS))
        support = [rng.choice(REASON_TEMPLATES).format(fact.reason)] if plan["reason"] else []
        support += rng.sample(fact.details, plan["details"])
        head = " ".join(openers + [self._answer_sentence(fact, plan, rng)])
        if plan["bullets"] and len(support) >= 2:
            return head + "\n" + "\n".join(f"- {line}" for line in support)
        return " ".join([head] + support)

    def planned_features(self, plan: Mapping) -> dict:
        support = int(plan["reason"]) + plan["details"]
        return {"answer": plan["answer"], "keyword_coverage": 1.0 if plan["topic"] else 0.0,
                "emotive": plan["emotive"], "reasoning": int(plan["reason"]), "informative": 1 + support,
                "list_lines": support if plan["bullets"] and support >= 2 else 0}

    def features(self, item: str, text: str) -> dict:
        fact = FACTS_BY_KEY[item]
        right = any(contains_phrase(text, alias) for alias in fact.answer)
        wrong = any(contains_phrase(text, alias) for aliases in fact.wrong for alias in aliases)
        answer = "hedged" if right and wrong else "correct" if right else "wrong" if wrong else "none"
        return {"answer": answer, "keyword_coverage": coverage(text, fact.keywords),
                "emotive": count_markers(text, EMPATHY_MARKERS) + count_exclamations(text),
                "reasoning": int(count_markers(text, REASONING_CONNECTIVES) > 0),
                "informative": len(informative_segments(text)), "list_lines": list_lines(text)}

    def capability_scores(self, features: Mapping) -> dict[str, float]:
        return {
            "correctness": CORRECTNESS[features["answer"]],
            "objectiveness": 1.0 - min(features["emotive"], 2) / 2,
            "reasoning_ability": float(features["reasoning"]),
            "depth_of_knowledge": clip01((features["informative"] - 1 - features["reasoning"]) / 3),
            "question_specific": features["keyword_coverage"],
        }

    def gold(self, scores: Mapping[str, float]) -> float:
        c, d = scores["correctness"], scores["depth_of_knowledge"]
        return (3.0 * c + 1.0 * scores["question_specific"] + 0.6 * scores["reasoning_ability"]
                + 0.5 * scores["objectiveness"] + d * (1.5 * c - 0.5))


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]
