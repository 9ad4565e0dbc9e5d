"""Task categories from an LLM judge, for preference data that has none (e.g. TRL data sets without a ``category``).

Each distinct prompt (the conversation before the answers) is classified against the category set twice, with the
list of categories in two orders (as given and reversed), and the category is kept only when both answers agree:
the same position-swap consistency filter as the capability labels, applied to the order of the options. Answers go
through :class:`~dmoerm_trl.labeling.judge_client.JudgeClient`, so they are cached (a rerun makes no calls), retried
and counted like every judge request.

Example:
    >>> import asyncio
    >>> from dmoerm_trl.labeling.categorizer import CategoryClassifier
    >>> classifier = CategoryClassifier(judge, spec)  # doctest: +SKIP
    >>> result = asyncio.run(classifier.aclassify([[{"role": "user", "content": "What is 2+2?"}]]))  # doctest: +SKIP
    >>> result.categories, result.report["consistency"]  # doctest: +SKIP
    ({'5f0c...': 'objective_qa'}, 1.0)
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..data import conversation_key
from .judge_client import BudgetExhausted, RequestTooLong
from .prompts import render_conversation

SYSTEM = "You are a careful annotator. You classify the task of a conversation into exactly one category."
INSTRUCTION = (
    "Conversation:\n{conversation}\n\nCategories:\n{options}\n\nWhich category does the user's task in this "
    "conversation belong to? Answer with the number of the category only."
)
TEMPLATE_SHA256 = hashlib.sha256((SYSTEM + INSTRUCTION).encode("utf-8")).hexdigest()
_NUMBER = re.compile(r"(?<![\d.])(\d{1,2})(?![\d.])")


@dataclass
class CategorizationResult:
    """``categories``: conversation key -> category, for the prompts whose two answers agreed; ``outcomes``: one row
    per prompt (key, category or None, both answers' categories, status); ``report``: counts and consistency."""

    categories: dict[str, str]
    outcomes: list[dict] = field(default_factory=list)
    report: dict = field(default_factory=dict)


class CategoryClassifier:
    """Classifies prompts into the categories of a :class:`~dmoerm_trl.data.CategorySpec` with an LLM judge.

    Args:
        judge: a :class:`~dmoerm_trl.labeling.judge_client.JudgeClient` (built with ``template_sha256=TEMPLATE_SHA256``
            so its cache entries cannot collide with capability-label requests).
        spec: the category set; a category is described by its key and its aliases.
        max_tokens: the answer's token limit (a number is all that is asked for).
    """

    def __init__(self, judge, spec, max_tokens: int = 8):
        self.judge, self.spec, self.max_tokens = judge, spec, max_tokens
        self.names = list(spec.categories)

    def _describe(self, category: str) -> str:
        aliases = [alias for alias, key in self.spec.aliases.items() if key == category]
        readable = category.replace("_", " ")
        return f"{readable} ({', '.join(aliases[:2])})" if aliases else readable

    def messages(self, prompt: Sequence[Mapping[str, str]], order: Sequence[str]) -> list[dict]:
        options = "\n".join(f"{i}. {self._describe(name)}" for i, name in enumerate(order, start=1))
        user = INSTRUCTION.format(conversation=render_conversation(prompt), options=options)
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def parse(self, answer: str | None, order: Sequence[str]) -> str | None:
        """The category an answer names: the first option number in it, else the one category name it contains."""
        if not answer:
            return None
        for match in _NUMBER.finditer(answer):
            number = int(match.group(1))
            if 1 <= number <= len(order):
                return order[number - 1]
        folded = answer.casefold()
        named = [name for name in order if name.casefold() in folded or name.replace("_", " ") in folded]
        return named[0] if len(named) == 1 else None

    async def aclassify(self, prompts: Sequence[Sequence[Mapping[str, str]]]) -> CategorizationResult:
        """Classify every distinct prompt of ``prompts`` (two requests each; duplicates are asked once)."""
        unique: dict[str, Sequence[Mapping[str, str]]] = {}
        for prompt in prompts:
            unique.setdefault(conversation_key(prompt), prompt)
        orders = (self.names, list(reversed(self.names)))

        async def one(key: str, prompt) -> dict:
            answers, statuses = [], []
            for order in orders:
                try:
                    answer = await self.judge.ask(self.messages(prompt, order), max_tokens=self.max_tokens)
                except (BudgetExhausted, RequestTooLong) as err:
                    answer, status = None, "not_run" if isinstance(err, BudgetExhausted) else "too_long"
                else:
                    status = "failed" if answer is None else "answered"
                statuses.append(status)
                answers.append(self.parse(answer, order) if answer is not None else None)
            if any(status != "answered" for status in statuses):
                outcome = next(status for status in statuses if status != "answered")
            elif None in answers:
                outcome = "undecided"
            elif answers[0] != answers[1]:
                outcome = "inconsistent"
            else:
                outcome = "kept"
            return {
                "key": key,
                "category": answers[0] if outcome == "kept" else None,
                "answers": answers,
                "status": outcome,
            }

        outcomes = await asyncio.gather(*(one(key, prompt) for key, prompt in unique.items()))
        counts = Counter(row["status"] for row in outcomes)
        both_answered = counts["kept"] + counts["inconsistent"]
        report = {
            "prompts": len(outcomes),
            "kept": counts["kept"],
            "inconsistent": counts["inconsistent"],
            "undecided": counts["undecided"],
            "failed": counts["failed"] + counts["too_long"] + counts["not_run"],
            "consistency": round(counts["kept"] / both_answered, 4) if both_answered else None,
            "per_category": dict(Counter(row["category"] for row in outcomes if row["category"])),
        }
        categories = {row["key"]: row["category"] for row in outcomes if row["category"]}
        return CategorizationResult(categories=categories, outcomes=list(outcomes), report=report)


def classify_prompts(config, prompts, spec, *, api_key: str | None = None) -> CategorizationResult:
    """Classify ``prompts`` with the judge of a :class:`~dmoerm_trl.labeling.config.LabelingConfig` (its endpoint,
    model, cache, concurrency, retries and budget)."""
    import os

    from .cache import LabelCache
    from .judge_client import CallStats, JudgeClient

    async def run() -> CategorizationResult:
        from ..utils.extras import require_openai

        openai = require_openai()

        key = api_key if api_key is not None else os.environ.get(config.api_key_env)
        client = openai.AsyncOpenAI(
            base_url=config.base_url, api_key=key or "no-key-needed", max_retries=0, timeout=config.timeout
        )
        cache = LabelCache(config.cache_path)
        stats = CallStats()
        judge = JudgeClient.from_config(
            client, config, cache, template_sha256=TEMPLATE_SHA256, response_format="none", secret=key, stats=stats
        )
        try:
            result = await CategoryClassifier(judge, spec).aclassify(prompts)
        finally:
            await client.close()
            cache.close()
        result.report.update({"calls": stats.calls, "cache_hits": stats.cache_hits, "retries": stats.retries})
        return result

    return asyncio.run(run())
