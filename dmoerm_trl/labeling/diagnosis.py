"""Why a labeling run kept few (or no) labels: one line per cause, with what to try.

Every capability judgement of a pair ends as a label or as one cause of loss (counted per capability in the
summary): ``undecided`` (an answer named neither response), ``inconsistent`` (the two orders disagreed: position
bias or noise), ``failed`` (a request failed after every retry), ``too_long`` (over the judge's context) or
``not_run`` (the budget ran out). :func:`explain_label_losses` turns those counts into sentences; ``dmoerm label``
prints them when fewer than half of the judgements became labels, and ``summary.json`` always has them
(``why_few_labels``).

Example:
    >>> summary = {"mode": "joint", "labels": 0, "failed_requests": 0, "errors_by_kind": {},
    ...            "template": {"language": "en"},
    ...            "undecided_example": {"capabilities": ["logic"], "answer": "Both are good."},
    ...            "per_capability": {"objective_qa": {"logic": {"pairs": 4, "labeled": 0, "undecided": 3,
    ...                               "inconsistent": 1, "failed": 0, "too_long": 0, "not_run": 0}}}}
    >>> for line in explain_label_losses(summary, data_language="en"):
    ...     print(line.split(":")[0])
    undecided
    inconsistent
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
FEW_LABELS_FRACTION = 0.5  # below this share of judgements kept, `dmoerm label` prints the causes


def data_language(rows: Sequence[Mapping], sample: int = 50) -> str:
    """``"zh"`` when most letters of the first ``sample`` pairs' texts are Chinese characters, else ``"en"``.

    Example:
        >>> data_language([{"prompt": [{"role": "user", "content": "你好吗"}], "chosen": [], "rejected": []}])
        'zh'
    """
    cjk = letters = 0
    for row in list(rows)[:sample]:
        for key in ("prompt", "chosen", "rejected"):
            for message in row.get(key) or []:
                text = message.get("content", "") if isinstance(message, Mapping) else str(message)
                cjk += len(_CJK.findall(text))
                letters += len(_LETTER.findall(text))
    return "zh" if letters and cjk / letters > 0.3 else "en"


def _share(count: int, total: int) -> str:
    return f"{count} of {total} judgements ({100 * count / total:.0f}%)" if total else f"{count}"


def _language_tip(summary: Mapping, data_lang: str | None) -> str:
    template = summary.get("template") or {}
    builtin = not (summary.get("options") or {}).get("template")
    if builtin and data_lang and template.get("language") != data_lang:
        return f"--language {data_lang} (the data is {'Chinese' if data_lang == 'zh' else 'English'})"
    return "a template in the judge's language (--language en|zh or --template FILE)"


def explain_label_losses(summary: Mapping, *, data_language: str | None = None) -> list[str]:
    """One line per cause of lost labels, largest first, each with its count and what to try.

    ``summary`` is a labeling summary (:func:`dmoerm_trl.labeling.run_labeling`); ``data_language`` ("en"/"zh"),
    when known, makes the template advice concrete. Returns ``[]`` when every judgement became a label.
    """
    totals = {key: 0 for key in ("pairs", "labeled", "undecided", "inconsistent", "failed", "too_long", "not_run")}
    for capabilities in (summary.get("per_capability") or {}).values():
        for tally in capabilities.values():
            for key in totals:
                totals[key] += int(tally.get(key) or 0)
    judgements = totals["pairs"]
    language = _language_tip(summary, data_language)
    stronger = "a stronger judge (a larger local model behind vLLM, or an API model)"
    lines: list[tuple[int, str]] = []
    if totals["undecided"]:
        example = summary.get("undecided_example") or {}
        shown = f", e.g. for {', '.join(example['capabilities'])}: {example['answer']!r}" if example else ""
        tips = [stronger]
        if summary.get("mode") == "joint":
            tips.append("--mode per_capability (one short question per capability; small judges rarely write JSON)")
        tips.append(language)
        lines.append(
            (
                totals["undecided"],
                (
                    f"undecided: {_share(totals['undecided'], judgements)}: an answer named neither response{shown}. "
                    f"Try {'; '.join(tips)}."
                ),
            )
        )
    if totals["inconsistent"]:
        lines.append(
            (
                totals["inconsistent"],
                (
                    f"inconsistent: {_share(totals['inconsistent'], judgements)}: the judge picked different "
                    f"responses when the order was swapped (position bias or noise). Try {stronger}; {language}."
                ),
            )
        )
    if totals["failed"] or summary.get("failed_requests"):
        errors = ", ".join(f"{kind} {n}" for kind, n in sorted((summary.get("errors_by_kind") or {}).items()))
        tip = "rerun the same command: answered requests come from the cache"
        if (summary.get("errors_by_kind") or {}).get("timeout"):
            tip += "; for a slow local judge raise --timeout or lower --concurrency (docs/labeling.md)"
        lines.append(
            (
                totals["failed"],
                (
                    f"failed requests: {summary.get('failed_requests', 0)} request(s) failed after every retry, "
                    f"losing {_share(totals['failed'], judgements)} (errors: {errors or 'none recorded'}). Try: {tip}."
                ),
            )
        )
    if totals["too_long"]:
        lines.append(
            (
                totals["too_long"],
                (
                    f"too long: {_share(totals['too_long'], judgements)}: the prompt exceeds the judge's context. "
                    "Try a judge with a longer context."
                ),
            )
        )
    if totals["not_run"]:
        lines.append(
            (
                totals["not_run"],
                (
                    f"not run: {_share(totals['not_run'], judgements)}: the budget ran out or the run stopped. "
                    "Try: rerun with a larger --budget-calls/--budget-tokens (answers so far come from the cache)."
                ),
            )
        )
    lines.sort(key=lambda item: -item[0])
    return [line for _, line in lines]


def few_labels(summary: Mapping) -> bool:
    """True when fewer than :data:`FEW_LABELS_FRACTION` of the capability judgements became labels."""
    judgements = sum(
        int(t.get("pairs") or 0) for caps in (summary.get("per_capability") or {}).values() for t in caps.values()
    )
    return judgements > 0 and summary.get("labels", 0) < FEW_LABELS_FRACTION * judgements
