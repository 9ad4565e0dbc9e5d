"""The capability labeler: ask an LLM judge which response of each pair is better on each capability, twice with the
responses swapped, and keep a label only when both answers agree (the paper's position-swap consistency filter).

Modes:
    ``per_capability`` (the paper): one request per pair, capability and order: 2 * k requests per pair.
    ``joint``: one request per pair and order returning a JSON verdict for all k capabilities: 2 requests per pair.

Outputs of :func:`run_labeling` (written atomically into ``config.output``):
    ``capability_pairs.jsonl``: one row per kept label, columns ``prompt``, ``chosen``, ``rejected``, ``category``,
    ``capability``, ``pair_id`` (of the source pair); TRL's ``RewardTrainer`` reads it as is, and
    ``datasets.load_dataset("json", data_files=...)`` or :func:`dmoerm_trl.data.load_capability_labels` load it.
    ``summary.json``: calls, cache hits, retries, tokens, estimated cost, consistency per capability, elapsed time,
    and ``why_few_labels``: one line per cause of lost labels, with what to try (:mod:`.diagnosis`).

Example:
    >>> from dmoerm_trl.labeling import LabelingConfig, run_labeling
    >>> config = LabelingConfig(data="pairs.jsonl", output="labels", model="judge", mode="joint",
    ...                         base_url="http://127.0.0.1:8000/v1")  # e.g. `dmoerm serve-judge --model PATH`
    >>> result = run_labeling(config)  # doctest: +SKIP
    >>> result.summary["per_capability"]["objective_qa"]["logic"]["consistency_rate"]  # doctest: +SKIP
    0.83
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.categories import CategorySpec, load_category_spec
from ..utils.io import atomic_write_json
from .cache import LabelCache
from .config import LabelingConfig
from .diagnosis import data_language, explain_label_losses
from .judge_client import BudgetExhausted, CallStats, JudgeClient, JudgeError, RequestTooLong, redact
from .pricing import resolve_price
from .prompts import PromptTemplate, load_template, parse_joint_verdict, parse_pairwise_verdict

logger = logging.getLogger(__name__)

LABELS_FILE = "capability_pairs.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass
class CapabilityTally:
    """Outcomes of one capability: ``labeled`` kept, the rest counted by reason."""

    pairs: int = 0
    labeled: int = 0
    inconsistent: int = 0  # the two orders disagree (position bias or noise)
    undecided: int = 0  # at least one answer named neither response (or could not be parsed)
    failed: int = 0  # a request failed after every retry (asked again by the next run)
    not_run: int = 0  # the budget ran out (or the run stopped) before both requests were answered
    too_long: int = 0  # the prompt does not fit the judge's context window
    agrees_with_human: int = 0  # labels whose better response is the human-preferred one

    def as_dict(self) -> dict:
        judged = self.labeled + self.inconsistent + self.undecided
        out = asdict(self)
        out["consistency_rate"] = round(self.labeled / judged, 4) if judged else None
        out["human_agreement_rate"] = round(self.agrees_with_human / self.labeled, 4) if self.labeled else None
        return out


@dataclass
class LabelingResult:
    labels: list[dict]
    summary: dict
    stats: CallStats = field(default_factory=CallStats)


@dataclass(frozen=True)
class _Request:
    pair_index: int
    capabilities: tuple[str, ...]
    swapped: bool  # False: (chosen, rejected) shown as (1, 2); True: shown as (2, 1)


def _safe_url(url: str | None) -> str | None:
    """The endpoint without credentials or query string (what the summary may record)."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class CapabilityLabeler:
    """Labels a pairs dataset (:func:`dmoerm_trl.data.load_preference_pairs`) with capability preferences.

    Args:
        config: a :class:`LabelingConfig`.
        api_key: the key; default: the environment variable ``config.api_key_env``. Only the ``openai`` client
            sees it.
        spec: the category set (default: ``config.categories``).
    """

    def __init__(self, config: LabelingConfig, *, api_key: str | None = None, spec: CategorySpec | None = None):
        self.config = config
        self.spec = spec or load_category_spec(config.categories)
        self.template: PromptTemplate = load_template(config.mode, config.language, config.template)
        self._api_key = api_key if api_key is not None else os.environ.get(config.api_key_env)

    def requests_for(self, rows: Sequence[dict]) -> Iterator[_Request]:
        """Every request the pairs need, pair by pair (so a budget stop leaves whole pairs done)."""
        for index, row in enumerate(rows):
            capabilities = self.spec.categories.get(row["category"])
            if not capabilities:
                continue
            groups = [(c,) for c in capabilities] if self.config.mode == "per_capability" else [tuple(capabilities)]
            for group in groups:
                yield _Request(index, group, swapped=False)
                yield _Request(index, group, swapped=True)

    def _messages(self, row: dict, request: _Request) -> list[dict]:
        # Text pairs (TRL's standard format) are shown to the judge as one user turn and the answers' text.
        chosen, rejected = (
            side if isinstance(side, str) else side[-1]["content"] for side in (row["chosen"], row["rejected"])
        )
        first, second = (rejected, chosen) if request.swapped else (chosen, rejected)
        prompt = [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else row["prompt"]
        return self.template.render(
            prompt=prompt,
            response_1=first,
            response_2=second,
            capabilities=request.capabilities,
            spec=self.spec,
        )

    def _verdicts(self, answer: str, request: _Request) -> dict[str, int | None]:
        if self.config.mode == "per_capability":
            return {request.capabilities[0]: parse_pairwise_verdict(answer)}
        return parse_joint_verdict(answer, self.template.json_keys(request.capabilities, self.spec))

    async def alabel(self, pairs) -> LabelingResult:
        """Label ``pairs`` (a ``datasets.Dataset`` or a list of pair dicts). See :func:`run_labeling` for outputs."""
        from ..utils.extras import require_openai

        openai = require_openai()
        from tqdm.auto import tqdm

        config = self.config
        started = time.perf_counter()
        rows = pairs.to_list() if hasattr(pairs, "to_list") else list(pairs)
        unlabeled = [r for r in rows if r["category"] not in self.spec.categories]
        if rows and len(unlabeled) == len(rows):  # nothing to ask: a run would end with 0 labels and exit code 0
            raise ValueError(
                f"{config.data or 'the data'}: none of its {len(rows)} pairs has a category of the set "
                f"{self.spec.source} (e.g. {unlabeled[0]['category']!r}), so no capability can be labeled. Fix: add a "
                f"'category' column (or 'label' in ranked records) naming one of {sorted(self.spec.categories)}, or "
                "pass --categories with your own set; TRL data without categories: dmoerm train classifies the prompts "
                "with the judge (categorize_with_judge: true, docs/training.md)"
            )
        if unlabeled:
            logger.warning(
                "%d pair(s) have no category of the set %s (e.g. %r): they get no capability labels.",
                len(unlabeled),
                self.spec.source,
                unlabeled[0]["category"],
            )
        total = sum(1 for _ in self.requests_for(rows))
        requests = self.requests_for(rows)
        stats = CallStats()
        client = openai.AsyncOpenAI(
            base_url=config.base_url, api_key=self._api_key or "no-key-needed", max_retries=0, timeout=config.timeout
        )
        cache = LabelCache(config.cache_path)
        judge = JudgeClient.from_config(
            client, config, cache, template_sha256=self.template.sha256, secret=self._api_key, stats=stats
        )
        outcomes: dict[tuple[int, str, bool], tuple[str, int | None]] = {}
        undecided_answers: list[dict] = []  # the first answer that named neither response (for the summary)
        abort: list[str] = []
        progress = tqdm(total=total, desc=f"labeling ({config.mode})", unit="req", disable=not config.progress)

        async def worker():
            for request in requests:  # a shared iterator: each request goes to exactly one worker
                if abort:
                    return
                row = rows[request.pair_index]
                max_tokens = config.completion_token_limit(len(request.capabilities))
                try:
                    answer = await judge.ask(
                        self._messages(row, request), max_tokens=max_tokens, want_json=config.mode == "joint"
                    )
                except BudgetExhausted:
                    status, verdicts = "not_run", {}
                except RequestTooLong:
                    status, verdicts = "too_long", {}
                except JudgeError as err:
                    abort.append(redact(str(err), self._api_key))
                    return
                else:
                    status = "failed" if answer is None else "answered"
                    verdicts = self._verdicts(answer, request) if answer is not None else {}
                    unclear = [c for c in request.capabilities if verdicts.get(c) is None]
                    if answer is not None and unclear and not undecided_answers:
                        undecided_answers.append({"capabilities": unclear, "answer": answer[:400]})
                for capability in request.capabilities:
                    outcomes[(request.pair_index, capability, request.swapped)] = (status, verdicts.get(capability))
                progress.update(1)
                if progress.n % 16 == 0 or progress.n == total:
                    progress.set_postfix(
                        calls=stats.calls, hits=stats.cache_hits, retries=stats.retries, refresh=False
                    )

        try:
            await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        finally:
            progress.close()
            await client.close()
            json_mode = judge.json_mode_active() if config.mode == "joint" else None
            cache.close()
        labels, tallies = self._collect(rows, outcomes)
        summary = self._summary(
            rows,
            labels,
            tallies,
            stats,
            total,
            json_mode,
            judge.budget_exhausted,
            abort[0] if abort else None,
            time.perf_counter() - started,
        )
        summary["concurrency"] = {
            "configured": config.concurrency,
            "lowest": int(judge.concurrency.lowest),
            "final": int(judge.concurrency.limit),
            "reductions": judge.concurrency.reductions,
        }
        summary["undecided_example"] = undecided_answers[0] if undecided_answers else None
        summary["why_few_labels"] = explain_label_losses(summary, data_language=data_language(rows))
        return LabelingResult(labels=labels, summary=summary, stats=stats)

    def label(self, pairs) -> LabelingResult:
        """Synchronous :meth:`alabel`."""
        return asyncio.run(self.alabel(pairs))

    def _collect(self, rows, outcomes):
        labels: list[dict] = []
        tallies: dict[str, dict[str, CapabilityTally]] = {
            category: {c: CapabilityTally() for c in capabilities}
            for category, capabilities in self.spec.categories.items()
        }
        for index, row in enumerate(rows):
            for capability in self.spec.categories.get(row["category"], []):
                tally = tallies[row["category"]][capability]
                tally.pairs += 1
                first = outcomes.get((index, capability, False), ("not_run", None))
                second = outcomes.get((index, capability, True), ("not_run", None))
                statuses = {first[0], second[0]}
                if "not_run" in statuses:
                    tally.not_run += 1
                elif "too_long" in statuses:
                    tally.too_long += 1
                elif "failed" in statuses:
                    tally.failed += 1
                elif first[1] is None or second[1] is None:
                    tally.undecided += 1
                elif (first[1] == 1) != (second[1] == 2):  # shown first, chosen won; swapped, chosen is response 2
                    tally.inconsistent += 1
                else:
                    tally.labeled += 1
                    chosen_wins = first[1] == 1
                    tally.agrees_with_human += chosen_wins
                    better, worse = (
                        (row["chosen"], row["rejected"]) if chosen_wins else (row["rejected"], row["chosen"])
                    )
                    labels.append(
                        {
                            "prompt": row["prompt"],
                            "chosen": better,
                            "rejected": worse,
                            "category": row["category"],
                            "capability": capability,
                            "pair_id": row["pair_id"],
                        }
                    )
        return labels, tallies

    def _summary(self, rows, labels, tallies, stats, total, json_mode, budget_stop, aborted, elapsed) -> dict:
        config = self.config
        price = resolve_price(
            config.model, config.price_table, config.price_input_per_million, config.price_output_per_million
        )
        labeled_pairs = sum(1 for r in rows if r["category"] in self.spec.categories)
        options = config.to_dict()
        options["base_url"] = _safe_url(config.base_url)
        return {
            "mode": config.mode,
            "model": config.model,
            "base_url": _safe_url(config.base_url),
            "template": {
                "source": self.template.source,
                "sha256": self.template.sha256,
                "language": self.template.language,
            },
            "json_response_format": json_mode,
            "pairs": len(rows),
            "pairs_without_category": len(rows) - labeled_pairs,
            "requests": total,
            "requests_per_pair": round(total / labeled_pairs, 4) if labeled_pairs else None,
            "labels": len(labels),
            "calls": stats.calls,
            "cache_hits": stats.cache_hits,
            "shared_answers": stats.shared_answers,
            "retries": stats.retries,
            "slow_answers": stats.slow_answers,
            "failed_requests": stats.failed_requests,
            "retry_wait_seconds": round(stats.retry_wait_seconds, 3),
            "errors_by_kind": dict(stats.errors_by_kind),
            "error_examples": list(stats.error_examples),
            "tokens_in": stats.tokens_in,
            "tokens_out": stats.tokens_out,
            "calls_without_usage": stats.calls_without_usage,
            "estimated_cost_usd": round(price.cost(stats.tokens_in, stats.tokens_out), 6),
            "price_per_million_tokens": {
                "input": price.input_per_million,
                "output": price.output_per_million,
                "price_known": price.known,
            },
            "per_capability": {
                category: {c: t.as_dict() for c, t in caps.items()}
                for category, caps in tallies.items()
                if any(t.pairs for t in caps.values())
            },
            "stopped_by_budget": budget_stop,
            "aborted": aborted,
            "complete": not budget_stop and not aborted and stats.failed_requests == 0,
            "elapsed_seconds": round(elapsed, 3),
            "options": options,
        }


def run_labeling(config: LabelingConfig, *, api_key: str | None = None) -> LabelingResult:
    """Read ``config.data``, label it, write ``capability_pairs.jsonl`` and ``summary.json`` into ``config.output``.

    A rerun with the same cache makes zero calls; a killed run resumes from the cache; with a budget the run stops
    cleanly and writes every label obtained so far (``summary["stopped_by_budget"]``).
    """
    from ..data import LoadReport, load_preference_pairs
    from ..utils.io import atomic_write_jsonl

    spec = load_category_spec(config.categories)
    report = LoadReport()
    pairs = load_preference_pairs(
        config.data,
        format=config.data_format,
        categories=spec,
        lower_rank_is_better=config.lower_rank_is_better,
        skip_invalid=config.skip_invalid,
        report=report,
    )
    labeler = CapabilityLabeler(config, api_key=api_key, spec=spec)
    result = labeler.label(pairs)
    result.summary["data"] = report.to_dict()
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(output / LABELS_FILE, result.labels)
    atomic_write_json(output / SUMMARY_FILE, result.summary)
    return result
