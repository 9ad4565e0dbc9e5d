"""Measurable attributes of a response text: segments, lexicon markers, questions, list lines.

Every capability score of the synthetic world is a function of these measurements, so it can be recomputed from
the text alone (by the generator, the capability judge and the gold reward, which share this module). They are
deliberately simple and documented in ``docs/fidelity.md``; they also work on free text (e.g. a policy's samples).

- A *segment* is a sentence (split after ``.``, ``!``, ``?``) of one line (lines are split first); bullet and
  numbering markers (``-``, ``*``, ``•``, ``1.``) are stripped.
- A segment is *informative* when it has at least 4 words, does not end with ``?``, ``!`` or ``:``, and contains no
  empathy marker.
- Phrases match case-insensitively on word boundaries (``'`` counts as a word character, ``’`` is read as ``'``);
  ``"a|b"`` matches either alternative (keywords with their plural or synonyms).

Example:
    >>> from dmoerm_trl.synthetic.text_features import (segments, informative_segments, count_markers,
    ...     count_questions, list_lines, EMPATHY_MARKERS)
    >>> text = "I'm sorry you're dealing with this. Rest helps a lot.\\n- Drink water every hour.\\nHow do you feel?"
    >>> segments(text)
    ["I'm sorry you're dealing with this.", 'Rest helps a lot.', 'Drink water every hour.', 'How do you feel?']
    >>> len(informative_segments(text)), count_markers(text, EMPATHY_MARKERS), count_questions(text), list_lines(text)
    (2, 1, 1, 1)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

__all__ = [
    "EMPATHY_MARKERS",
    "PLAIN_WORDS",
    "REASONING_CONNECTIVES",
    "VIVID_WORDS",
    "clip01",
    "contains_phrase",
    "count_exclamations",
    "count_markers",
    "count_questions",
    "coverage",
    "informative_segments",
    "is_informative",
    "list_lines",
    "nonempty_lines",
    "normalize",
    "segments",
    "word_count",
]

# Phrases that acknowledge the user's feelings (chit-chat and role-play empathy; objective QA counts them against
# objectiveness). Generated sentences contain exactly one each.
EMPATHY_MARKERS = (
    "that sounds",
    "i'm sorry",
    "i understand",
    "i can imagine",
    "i hear you",
    "must be",
    "congratulations",
    "how wonderful",
    "glad to hear",
    "so happy for you",
    "proud of you",
)
# Words that announce an explanation (objective QA reasoning).
REASONING_CONNECTIVES = ("because", "therefore", "which means", "as a result", "that is why", "this explains")
# Evocative adjectives (text creation expressiveness); PLAIN_WORDS fill the same slots without counting.
VIVID_WORDS = (
    "shimmering",
    "whispering",
    "golden",
    "velvet",
    "restless",
    "ancient",
    "luminous",
    "silver",
    "fierce",
    "gentle",
    "glowing",
    "crimson",
    "endless",
    "secret",
    "wild",
    "radiant",
)
PLAIN_WORDS = ("nice", "good", "big", "small", "usual", "normal", "simple", "plain")

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z0-9']+")


def normalize(text: str) -> str:
    """Lowercase, curly quotes made straight."""
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"').lower()


def segments(text: str) -> list[str]:
    """Sentences of each line, bullet markers stripped, empty ones dropped."""
    out = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip()
        out += [part.strip() for part in _SENTENCE_END.split(line) if part.strip()]
    return out


def word_count(segment: str) -> int:
    return len(_WORD.findall(normalize(segment)))


@lru_cache(maxsize=4096)
def _phrase_pattern(phrase: str) -> tuple[str, re.Pattern]:
    # Word boundaries; a number does not match inside "8,849" or "3.5".
    folded = normalize(phrase)
    return folded, re.compile(r"(?<![a-z0-9'])" + re.escape(folded) + r"(?![a-z0-9']|[.,]\d)")


def _contains_normalized(folded_text: str, phrase: str) -> bool:
    if "|" in phrase:
        return any(_contains_normalized(folded_text, alternative) for alternative in phrase.split("|"))
    folded, pattern = _phrase_pattern(phrase)
    return folded in folded_text and pattern.search(folded_text) is not None  # the substring test is the fast path


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``text`` as whole words (case-insensitive); ``"a|b"`` means either.

    Example:
        >>> contains_phrase("Two spiders.", "spider"), contains_phrase("Two spiders.", "spider|spiders")
        (False, True)
    """
    return _contains_normalized(normalize(text), phrase)


def count_markers(text: str, markers: Iterable[str]) -> int:
    """How many distinct ``markers`` occur in ``text``."""
    folded_text = normalize(text)
    return sum(1 for marker in markers if _contains_normalized(folded_text, marker))


def is_informative(segment: str) -> bool:
    stripped = segment.rstrip()
    return (
        word_count(stripped) >= 4
        and not stripped.endswith(("?", "!", ":"))
        and count_markers(stripped, EMPATHY_MARKERS) == 0
    )


def informative_segments(text: str) -> list[str]:
    return [segment for segment in segments(text) if is_informative(segment)]


def count_questions(text: str) -> int:
    return sum(1 for segment in segments(text) if segment.rstrip().endswith("?"))


def count_exclamations(text: str) -> int:
    return text.count("!")


def list_lines(text: str) -> int:
    """Lines formatted as list items (``-``, ``*``, ``•``, ``1.``)."""
    return sum(1 for line in text.splitlines() if _BULLET.match(line) and line.strip())


def nonempty_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def coverage(text: str, keywords: Iterable[str]) -> float:
    """Fraction of ``keywords`` (each may list alternatives, ``"shoes|shoe"``) that occur in ``text``."""
    keywords = list(keywords)
    return count_markers(text, keywords) / len(keywords) if keywords else 0.0


def clip01(value: float) -> float:
    return min(1.0, max(0.0, value))
