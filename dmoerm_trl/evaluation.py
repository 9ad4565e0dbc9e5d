"""Evaluating reward models the way the DMoERM paper does, with the rank direction right.

* Pairwise consistency with human ranks: for every human pair, is ``reward(chosen) > reward(rejected)``? Chosen
  is the better-ranked response (``rank`` 1 beats 2 in mtmc-rlhf; see ``dmoerm_trl.data``); equal human ranks give
  no pair (excluded, counted). Reported per category and overall. A reward tie counts as wrong (and is counted).
* Router accuracy: the routed category against the labelled one, on the prompt alone and on prompt + response.
* Expert accuracy: each capability expert's pairwise accuracy on its capability labels.
* Side by side with a baseline single reward model (any ``AutoModelForSequenceClassification`` folder, e.g. the
  one ``dmoerm train-baseline`` writes).

:func:`pairwise_accuracy` works on plain reward numbers, so any scorer can be evaluated.

Example:
    >>> from dmoerm_trl.evaluation import pairwise_accuracy
    >>> pairwise_accuracy([2.0, 0.5, 1.0], [1.0, 0.7, 1.0], ["qa", "qa", "chat"])["per_category"]["qa"]["accuracy"]
    0.5
    >>> report = evaluate_reward_models("runs/dmoerm", "data/test.jsonl", baseline_path="runs/dmoerm/baseline")  # doctest: +SKIP
    >>> write_report(report, "runs/dmoerm/eval")  # eval_results.json, eval_results.md, eval_results.png  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .evaluation_report import plot_report, report_markdown, write_report  # noqa: F401  (re-exported)
from .evaluation_stats import accuracy_entry, add_intervals, summarize_pairs

logger = logging.getLogger(__name__)


def pairwise_accuracy(
    chosen_rewards: Sequence[float], rejected_rewards: Sequence[float], categories: Sequence[str] | None = None
) -> dict[str, Any]:
    """Share of pairs where the chosen response gets the higher reward, overall and per category.

    Returns ``{"overall": {...}, "per_category": {category: {...}}}`` with ``accuracy``, ``correct``, ``total``,
    ``ci95`` (the 95% Wilson interval) and ``reward_ties`` (pairs with equal rewards, counted as wrong). Rows with
    category ``""`` count in the overall only (``dmoerm eval`` reports them in a row of their own: see
    :func:`dmoerm_trl.evaluation_stats.summarize_pairs`).
    """
    if len(chosen_rewards) != len(rejected_rewards):
        raise ValueError(f"{len(chosen_rewards)} chosen rewards but {len(rejected_rewards)} rejected rewards")
    if categories is not None and len(categories) != len(chosen_rewards):
        raise ValueError(f"{len(categories)} categories for {len(chosen_rewards)} pairs")
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for index, (chosen, rejected) in enumerate(zip(chosen_rewards, rejected_rewards)):
        chosen, rejected = float(chosen), float(rejected)
        keys = ["__overall__"]
        if categories is not None and categories[index]:
            keys.append(categories[index])
        for key in keys:
            totals[key][0] += chosen > rejected
            totals[key][1] += 1
            totals[key][2] += chosen == rejected

    def entry(values):
        return accuracy_entry(*values)

    overall = entry(totals.pop("__overall__", [0, 0, 0]))
    return {"overall": overall, "per_category": {key: entry(value) for key, value in sorted(totals.items())}}


# ----------------------------------------------------------------------------------------------------- scoring
def reward_tokenizer_source(path: str | os.PathLike, model) -> str:
    """Where a saved reward model's tokenizer is: the model folder when it holds one (``tokenizer_config.json``),
    else, for a DMoERM, its base model (``config.base_model_name_or_path``, resolved at load: ``./base`` -> a real
    path), else the folder."""
    path = str(path)
    if os.path.exists(os.path.join(path, "tokenizer_config.json")) or not _is_dmoerm(model):
        return path
    return model.config.base_model_name_or_path


def load_reward_model(path: str | os.PathLike, device: str | None = None):
    """``(model, tokenizer)`` of a saved DMoERM or any sequence-classification reward model (a PEFT adapter folder
    of one is merged). The tokenizer comes from the folder, else from the DMoERM's base model."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    import dmoerm_trl  # noqa: F401  (registers the dmoerm model type)

    path = str(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such model folder")
    if os.path.exists(os.path.join(path, "adapter_config.json")):
        from peft import PeftConfig, PeftModel

        base = PeftConfig.from_pretrained(path).base_model_name_or_path
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
        tokenizer_source = path if os.path.exists(os.path.join(path, "tokenizer_config.json")) else base
    else:
        config = AutoConfig.from_pretrained(path)
        if config.model_type == "dmoerm":
            model = AutoModelForSequenceClassification.from_pretrained(path)
        else:
            model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
            if info.get("missing_keys"):  # e.g. a causal LM or bare encoder: its reward head would be random
                missing = sorted(info["missing_keys"])
                raise ValueError(
                    f"{path} is not a reward model: {', '.join(missing[:3])} would be newly initialized (random) "
                    f"for {(config.architectures or [config.model_type])[0]}; pass a saved DMoERM or "
                    "sequence-classification reward model"
                )
        tokenizer_source = reward_tokenizer_source(path, model)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def _batches(sequences: list[list[int]], batch_size: int, pad_token_id: int):
    """Length-sorted padded batches: yields ``(indices, input_ids, attention_mask)``."""
    from .data.batching import pad_sequences

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        yield (indices, *pad_sequences([sequences[i] for i in indices], pad_token_id))


def _is_dmoerm(model) -> bool:
    return getattr(model.config, "model_type", None) == "dmoerm"


def score_sequences(
    model,
    sequences: list[list[int]],
    pad_token_id: int,
    batch_size: int = 16,
    categories: list[str] | None = None,
    desc: str = "Scoring",
    prompt_lengths: list[int] | None = None,
) -> dict[str, Any]:
    """Rewards of token-id sequences: ``{"rewards": [...]}`` (+ ``"category_ids"``, ``"capability_rewards"`` for a
    DMoERM). ``categories`` (DMoERM only) bypasses the router; ``prompt_lengths`` (DMoERM only: the leading prompt
    tokens of each sequence, for text pairs, which have no chat-template opener) is what the router reads."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    rewards: list[float] = [0.0] * len(sequences)
    category_ids: list[int] = [0] * len(sequences)
    capability_rewards: list[list[float]] = [[] for _ in sequences]
    dmoerm = _is_dmoerm(model)
    with torch.no_grad():
        for indices, input_ids, attention_mask in tqdm(
            list(_batches(sequences, batch_size, pad_token_id)), desc=desc, unit="batch", leave=False
        ):
            kwargs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
            if dmoerm and categories is not None:
                kwargs["categories"] = [categories[i] for i in indices]
            elif dmoerm and prompt_lengths is not None:
                lengths = torch.tensor([prompt_lengths[i] for i in indices]).unsqueeze(1)
                positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
                kwargs["prompt_mask"] = ((positions < lengths).long() * attention_mask).to(device)
            out = model(**kwargs)
            for row, i in enumerate(indices):
                rewards[i] = float(out.logits[row, 0])
                if dmoerm and out.category_ids is not None:
                    category_ids[i] = int(out.category_ids[row])
                if dmoerm and out.capability_rewards is not None:  # None in a training stage's forward
                    capability_rewards[i] = [float(x) for x in out.capability_rewards[row]]
    result: dict[str, Any] = {"rewards": rewards}
    if dmoerm:
        result["category_ids"], result["capability_rewards"] = category_ids, capability_rewards
    return result


def _route(model, sequences, pad_token_id: int, batch_size: int, desc: str, prompts_only: bool = False) -> list[int]:
    """Router decisions only (``model.route``: the router on the prompt tokens, no experts). ``prompts_only``: each
    sequence is a prompt alone (:func:`~dmoerm_trl.data.tokenize.routing_prompt`), which the router reads whole."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    routed = [0] * len(sequences)
    for indices, input_ids, attention_mask in tqdm(
        list(_batches(sequences, batch_size, pad_token_id)), desc=desc, unit="batch", leave=False
    ):
        attention_mask = attention_mask.to(device)
        prompt_mask = attention_mask if prompts_only else None
        categories = model.route(input_ids.to(device), attention_mask, prompt_mask=prompt_mask).argmax(-1).tolist()
        for row, i in enumerate(indices):
            routed[i] = int(categories[row])
    return routed


# -------------------------------------------------------------------------------------------------- evaluation
def prepare_pairs(pairs, tokenizer, max_length: int | None, what: str, counts: dict):
    """Tokenize preference pairs for scoring. A conversation longer than ``max_length`` keeps its end (its oldest
    prompt tokens go, the response stays: :mod:`dmoerm_trl.truncation`); such pairs are counted in
    ``counts[f"{what}_truncated_left"]`` (with a warning), never dropped or cut silently."""
    from .data.tokenize import tokenize_pairs
    from .truncation import keep_end, warn_truncated

    pairs = tokenize_pairs(pairs, tokenizer, None, what)
    if max_length is None:
        return pairs
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    too_long = [
        len(chosen) > max_length or len(rejected) > max_length
        for chosen, rejected in zip(pairs["chosen_ids"], pairs["rejected_ids"])
    ]
    if any(too_long):
        counts[f"{what}_truncated_left"] = sum(too_long)
        warn_truncated(what, sum(too_long), len(pairs), max_length)

        def cut(row):
            cut_row = {c: keep_end(row[c], max_length) for c in columns}
            for side in ("chosen", "rejected"):  # text pairs: the prompt tokens left after the cut (0: none)
                if f"{side}_prompt_length" in row:
                    dropped = len(row[f"{side}_ids"]) - len(cut_row[f"{side}_ids"])
                    cut_row[f"{side}_prompt_length"] = max(row[f"{side}_prompt_length"] - dropped, 0)
            return cut_row

        pairs = pairs.map(cut, desc=f"{what}: keep ends")
    return pairs


def _model_categories(pairs, model) -> list[str]:
    """Each pair's category as a model category name where it resolves to one (the paper's names and aliases), else
    the label as it is ("" when none): a category the model lacks keeps its name, to be reported in its own row."""
    from .data import load_category_spec

    names = model.config.categories if _is_dmoerm(model) else None
    paper = load_category_spec("paper")
    resolved = []
    for category in pairs["category"]:
        if names is not None and category and category not in names:
            key = paper.resolve(category)
            category = key if key in names else category
        resolved.append(category)
    return resolved


def evaluate_pair_accuracy(model, tokenizer, pairs, batch_size: int = 16, desc: str = "Scoring pairs"):
    """Pairwise accuracy of one reward model on tokenized pairs (``chosen_ids``/``rejected_ids``/``category``)."""
    sequences = list(pairs["chosen_ids"]) + list(pairs["rejected_ids"])
    prompt_lengths = None
    if "chosen_prompt_length" in pairs.column_names:  # text pairs: the router reads the prompt's tokens
        prompt_lengths = list(pairs["chosen_prompt_length"]) + list(pairs["rejected_prompt_length"])
    scores = score_sequences(
        model, sequences, tokenizer.pad_token_id, batch_size, desc=desc, prompt_lengths=prompt_lengths
    )
    n = len(pairs)
    result = pairwise_accuracy(scores["rewards"][:n], scores["rewards"][n:], list(pairs["category"]))
    return result, scores


def evaluate_router(model, tokenizer, pairs, batch_size: int = 16) -> dict[str, Any]:
    """Router accuracy per pair, overall and per category, on what the model routes on: the prompt up to the chat
    template's assistant-turn opener (responses cannot change it). A model without a recorded prompt boundary
    (routing on the whole text) is also measured on prompt + response (``"full"``, both responses)."""
    from .data.tokenize import routing_prompts

    names = model.config.category_names
    rows = [i for i, c in enumerate(pairs["category"]) if c in names]
    if not rows:
        return {"prompt": None, "full": None, "note": "no pair has a category of the model"}
    pairs = pairs.select(rows)
    labels = [names.index(c) for c in pairs["category"]]
    result = {}
    opener = model.config.assistant_opener_ids
    if opener or "chosen_prompt_length" in pairs.column_names:
        views = [("prompt", routing_prompts(pairs, opener), labels)]
    else:
        views = [
            ("prompt", list(pairs["prompt_ids"]), labels),
            ("full", list(pairs["chosen_ids"]) + list(pairs["rejected_ids"]), labels + labels),
        ]
    for view, sequences, targets in views:
        routed = _route(
            model,
            sequences,
            tokenizer.pad_token_id,
            batch_size,
            desc=f"Routing ({view})",
            prompts_only=view == "prompt",
        )
        per_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for decision, target in zip(routed, targets):
            per_category[names[target]][0] += decision == target
            per_category[names[target]][1] += 1
        correct = sum(decision == target for decision, target in zip(routed, targets))
        result[view] = {
            "accuracy": correct / len(targets),
            "correct": correct,
            "total": len(targets),
            "per_category": {c: {"accuracy": k / n, "total": n} for c, (k, n) in sorted(per_category.items())},
        }
    return result


def evaluate_experts(model, tokenizer, labels, batch_size: int = 16) -> dict[str, Any]:
    """Each expert's pairwise accuracy on its capability labels (the router is bypassed: the label's category)."""
    categories = model.config.categories
    keep = [
        i for i, (c, cap) in enumerate(zip(labels["category"], labels["capability"])) if cap in categories.get(c, [])
    ]
    skipped = len(labels) - len(keep)
    labels = labels.select(keep)
    result: dict[str, Any] = {"skipped_unknown_capability": skipped, "per_expert": {}}
    if not len(labels):
        return result
    sequences = list(labels["chosen_ids"]) + list(labels["rejected_ids"])
    label_categories = list(labels["category"])
    scores = score_sequences(
        model,
        sequences,
        tokenizer.pad_token_id,
        batch_size,
        categories=label_categories * 2,
        desc="Scoring capability labels",
    )
    n = len(labels)
    per_expert: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for i, (category, capability) in enumerate(zip(label_categories, labels["capability"])):
        column = categories[category].index(capability)
        chosen, rejected = scores["capability_rewards"][i][column], scores["capability_rewards"][n + i][column]
        per_expert[category][capability][0] += chosen > rejected
        per_expert[category][capability][1] += 1
    result["per_expert"] = {
        category: {cap: {"accuracy": k / t, "total": t} for cap, (k, t) in caps.items()}
        for category, caps in per_expert.items()
    }
    return result


def evaluate_reward_models(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    labels_path: str | os.PathLike | None = None,
    baseline_path: str | os.PathLike | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    lower_rank_is_better: bool = True,
    skip_invalid: bool = False,
    split: str | None = None,
    splits_file: str | os.PathLike | None = None,
    text_pairs: str = "chat",
) -> dict[str, Any]:
    """Evaluate a saved DMoERM (and optionally a baseline RM) on preference data; returns the report dict.

    The data may be mtmc-rlhf ranked lists or TRL pairs, with or without ``category``, and RewardBench's schema
    (``prompt``, ``chosen``, ``rejected``, ``subset``, ``id``): ``id`` and ``subset`` are kept. The report has, per
    model (``"dmoerm"`` or ``"model"``, and ``"baseline"``), the accuracy overall, per labelled category (pairs with a
    category the DMoERM lacks or with none in rows of their own), per routed category, per subset and per RewardBench
    section (see :func:`dmoerm_trl.evaluation_stats.summarize_pairs`), every accuracy with a 95% Wilson interval
    (``ci95``); ``"router"``, ``"experts"`` (with ``labels_path``) and ``"examples"``, one row per pair (written to
    ``eval_examples.jsonl`` by :func:`write_report`).

    ``split`` (``"validation"``, ``"task"`` or ``"aggregator"``) keeps only the pairs a training run put in that split
    (read from ``splits_file``, default ``<model_path>/splits.json``): e.g. the held-out validation pairs.
    ``text_pairs``: text (non-conversational) pairs are rendered with the chat template as one user turn and one
    assistant turn (``"chat"``, RewardBench's convention) or tokenized as text with no template (``"text"``, as TRL's
    RewardTrainer trains on them; the router then reads the prompt's tokens).

    Example:
        >>> report = evaluate_reward_models("runs/tiny", "rewardbench_sample.jsonl")  # doctest: +SKIP
        >>> chat = report["dmoerm"]["sections"]["Chat"]  # doctest: +SKIP
        >>> chat["accuracy"], chat["ci95"], report["dmoerm"]["per_routed_category"]  # doctest: +SKIP
    """
    from .data import LoadReport, load_capability_labels, load_preference_pairs
    from .evaluation_stats import INTERVAL_METHOD

    load_report = LoadReport()
    pairs = load_preference_pairs(
        data,
        lower_rank_is_better=lower_rank_is_better,
        skip_invalid=skip_invalid,
        report=load_report,
        keep_columns=("id", "subset"),
        text_pairs=text_pairs,
    )
    if split is not None:
        pairs = _select_split(pairs, split, splits_file or os.path.join(model_path, "splits.json"))
    if not len(pairs):
        raise ValueError(f"{data}: no preference pairs to evaluate (every candidate pair tied, or the file is empty)")
    model, tokenizer = load_reward_model(model_path)
    counts: dict[str, int] = {
        "human_ties_excluded": load_report.tied_pairs,
        "skipped_records": load_report.skipped_records,
    }
    limit = getattr(model.config, "max_position_embeddings", None)
    max_length = min(x for x in (max_length, limit) if x) if (max_length or limit) else None
    resolved = _model_categories(pairs, model)
    pairs = pairs.map(lambda row, i: {"category": resolved[i]}, with_indices=True, desc="Categories")
    pairs = prepare_pairs(pairs, tokenizer, max_length, "pairs", counts)
    report: dict[str, Any] = {
        "model": str(model_path),
        "data": str(data),
        "baseline_model": str(baseline_path) if baseline_path else None,
        "num_pairs": len(pairs),
        "counts": counts,
        "split": split,
        "interval_method": INTERVAL_METHOD,
    }
    dmoerm = _is_dmoerm(model)
    model_categories = model.config.category_names if dmoerm else None
    capabilities = model.config.categories if dmoerm else {}
    subsets = ["" if _json_text(value) is None else str(_json_text(value)) for value in pairs["subset"]]
    _, scores = evaluate_pair_accuracy(model, tokenizer, pairs, batch_size, desc="Scoring pairs (model)")
    n = len(pairs)
    routes = _pair_routes(scores, model_categories, n) if dmoerm else None
    report["dmoerm" if dmoerm else "model"] = summarize_pairs(
        scores["rewards"][:n],
        scores["rewards"][n:],
        list(pairs["category"]),
        subsets=subsets,
        routed=[route for route, _, _ in routes] if routes else None,
        model_categories=model_categories,
    )
    columns = {name: pairs[name] for name in ("id", "subset", "category", "pair_id")}
    examples = [
        _example_row(
            {name: values[i] for name, values in columns.items()},
            scores,
            i,
            n,
            routes[i] if routes else None,
            capabilities,
        )
        for i in range(n)
    ]
    if dmoerm:
        report["router"] = evaluate_router(model, tokenizer, pairs, batch_size)
        if labels_path is not None:
            labels = load_capability_labels(labels_path, skip_invalid=skip_invalid)
            if split is not None:  # only labels on the split's conversations (e.g. held out from training)
                from .data import conversation_key

                keys = {conversation_key(prompt) for prompt in pairs["prompt"]}
                labels = labels.select([i for i, p in enumerate(labels["prompt"]) if conversation_key(p) in keys])
            labels = prepare_pairs(labels, tokenizer, max_length, "capability_labels", counts)
            report["experts"] = evaluate_experts(model, tokenizer, labels, batch_size)
    if baseline_path is not None:
        del model
        baseline, baseline_tokenizer = load_reward_model(baseline_path)
        baseline_pairs = pairs
        if (
            baseline_tokenizer.get_vocab() != tokenizer.get_vocab()
            or baseline_tokenizer.chat_template != tokenizer.chat_template
        ):
            baseline_pairs = prepare_pairs(
                pairs.remove_columns(["prompt_ids", "chosen_ids", "rejected_ids"]),
                baseline_tokenizer,
                getattr(baseline.config, "max_position_embeddings", None),
                "baseline_pairs",
                counts,
            )
        _, baseline_scores = evaluate_pair_accuracy(
            baseline, baseline_tokenizer, baseline_pairs, batch_size, desc="Scoring pairs (baseline)"
        )
        m = len(baseline_pairs)
        row_of = {pair_id: i for i, pair_id in enumerate(pairs["pair_id"])}
        rows = [row_of[pair_id] for pair_id in baseline_pairs["pair_id"]]
        # The same rows as the DMoERM's (its categories, its routing), so the two columns of a table line up.
        report["baseline"] = summarize_pairs(
            baseline_scores["rewards"][:m],
            baseline_scores["rewards"][m:],
            [columns["category"][i] for i in rows],
            subsets=[subsets[i] for i in rows],
            routed=[routes[i][0] for i in rows] if routes else None,
            model_categories=model_categories,
        )
        for example in examples:
            example.update(baseline_chosen_reward=None, baseline_rejected_reward=None, baseline_correct=None)
        for j, i in enumerate(rows):
            chosen, rejected = baseline_scores["rewards"][j], baseline_scores["rewards"][m + j]
            examples[i].update(
                baseline_chosen_reward=_finite(chosen),
                baseline_rejected_reward=_finite(rejected),
                baseline_correct=chosen > rejected,
            )
        report["comparison"] = _compare_with_baseline(examples, columns["category"], model_categories)
    add_intervals({key: report[key] for key in ("router", "experts") if key in report})
    report["examples"] = examples
    return report


def _compare_with_baseline(examples, categories, model_categories) -> dict[str, Any]:
    """The model against the baseline on the pairs both scored (paired: McNemar, Agresti-Min interval), overall and
    per row of the category table."""
    from .evaluation_stats import category_rows, paired_comparison

    shared = [i for i, row in enumerate(examples) if row["baseline_correct"] is not None]
    rows, _ = category_rows([categories[i] for i in shared], model_categories)
    ours, theirs = [examples[i]["correct"] for i in shared], [examples[i]["baseline_correct"] for i in shared]
    per_row = {}
    for row in sorted(set(rows), key=lambda r: (r.startswith("("), r)):  # "(no category)" etc. after categories
        keep = [j for j, r in enumerate(rows) if r == row]
        per_row[row] = paired_comparison([ours[j] for j in keep], [theirs[j] for j in keep])
    return {
        "overall": paired_comparison(ours, theirs),
        "per_category": per_row,
        "method": "difference = model - baseline accuracy on the same pairs; 95% Agresti-Min interval; "
        "exact two-sided McNemar p-value",
    }


def _json_text(value: str):
    """A value kept by ``load_preference_pairs(keep_columns=...)`` (JSON text, "" when missing)."""
    return json.loads(value) if value else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _pair_routes(scores: dict[str, Any], names: list[str], n: int) -> list[tuple[str, str, str]]:
    """Per pair ``(row, chosen's category, rejected's category)``; ``row`` is the shared routed category, or
    :data:`~dmoerm_trl.evaluation_stats.SPLIT_ROUTING` when the two responses were routed to different categories."""
    from .evaluation_stats import SPLIT_ROUTING

    routes = []
    for i in range(n):
        chosen, rejected = names[scores["category_ids"][i]], names[scores["category_ids"][n + i]]
        routes.append((chosen if chosen == rejected else SPLIT_ROUTING, chosen, rejected))
    return routes


def _example_row(pair: dict[str, Any], scores: dict[str, Any], i: int, n: int, route, capabilities) -> dict[str, Any]:
    """One line of ``eval_examples.jsonl``: ``id`` (the data's own, else ``pair_id``), ``pair_id``, ``subset``,
    ``category``, the routed categories, both rewards, ``correct`` and the per-capability rewards (DMoERM)."""
    chosen, rejected = scores["rewards"][i], scores["rewards"][n + i]
    identifier = _json_text(pair["id"])
    row: dict[str, Any] = {
        "id": pair["pair_id"] if identifier is None else identifier,
        "pair_id": pair["pair_id"],
        "subset": _json_text(pair["subset"]),
        "category": pair["category"] or None,
    }
    if route is not None:
        row["routed_category"], row["routed_category_rejected"] = route[1], route[2]
    row.update(chosen_reward=_finite(chosen), rejected_reward=_finite(rejected), correct=chosen > rejected)
    if route is not None:
        for side, index, category in (("chosen", i, route[1]), ("rejected", n + i, route[2])):
            values = scores["capability_rewards"][index]
            row[f"{side}_capability_rewards"] = {
                capability: _finite(values[j]) if j < len(values) else None
                for j, capability in enumerate(capabilities.get(category, []))
            }
    return row


def _select_split(pairs, split: str, splits_file):
    if not os.path.exists(splits_file):
        raise FileNotFoundError(f"{splits_file}: no splits file (written by `dmoerm train` into its output folder)")
    splits = json.loads(Path(splits_file).read_text(encoding="utf-8"))
    wanted = {pid for entry in splits.values() for pid in entry.get(split, [])}
    if not wanted:
        raise ValueError(f"{splits_file} has no pairs in split {split!r} (splits: task, aggregator, validation)")
    keep = [i for i, pid in enumerate(pairs["pair_id"]) if pid in wanted]
    if not keep:
        raise ValueError(f"none of the pairs of the data is in the {split!r} split of {splits_file}: other data?")
    return pairs.select(keep)
