"""The data of one DMoERM pipeline run: the human pairs and capability labels (loaded, categorised, tokenized), their
splits by conversation, the routing of uncategorised pairs, and which rows each stage trains and validates on.

[`DMoERMTrainingPipeline`] owns one [`PipelineData`] (``pipeline.data``); the pipeline itself keeps the stages, their
state file and the models, and hands the data what it needs from them (the tokenizer, the state, the router)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..data.errors import DataReport, TrainingDataError
from ..data.formats import conversation_key
from ..data.splits import resolve_categories, rows_with_ids, select_capability_labels, split_by_conversation
from ..data.tokenize import tokenize_pairs
from .checkpointing import atomic_write_json
from .stage import Stage, wait_for_everyone

SPLITS_FILE = "splits.json"


class PipelineData:
    """The data side of a pipeline run; every attribute is set here and filled by [`~PipelineData.prepare`].

    Args:
        model_args: [`DMoERMModelArguments`] (the category set).
        data_args: [`DMoERMDataArguments`] (the sources, split ratios, skips, the judge's classification).
        training_args: [`DMoERMTrainingConfig`] (``categories_to_train``, ``max_length``, ``seed``, the stages).
        output_dir: the run folder (``splits.json`` and ``labels/`` go there).
        report: the run's [`DataReport`], filled with what was kept, dropped and why.

    Attributes:
        categories: category -> capabilities, of the model's category set.
        categories_to_train: the categories whose phases run.
        max_length: the token limit (``max_length``, capped by the backbone's positions).
        human: the tokenized human pairs (a ``datasets.Dataset``).
        labels: the tokenized capability labels, or ``None`` without ``capability_labels_path``.
        splits: category -> pair ids for phase 1 (``task``), phase 3 (``aggregator``) and ``validation``.
        validation_conversations: conversation keys of the validation pairs (their labels only validate experts).
        skipped_categories: category -> why its stages are skipped (``skip_empty_categories``).
        expert_data: (category, capability) -> the expert's ``train``/``validation`` labels (or its ``skip`` reason).

    Example:
        >>> from dmoerm_trl.data import DataReport
        >>> from dmoerm_trl.trainers import Stage
        >>> from dmoerm_trl.trainers.pipeline_data import PipelineData
        >>> data = PipelineData(model_args, data_args, training_args, "runs/tiny", DataReport())  # doctest: +SKIP
        >>> data.prepare(tokenizer, "HuggingFaceTB/SmolLM2-135M-Instruct", {"stages": {}})  # doctest: +SKIP
        >>> train, validation = data.stage_data(Stage("task", "chitchat"))  # doctest: +SKIP
    """

    def __init__(self, model_args, data_args, training_args, output_dir, report: DataReport) -> None:
        self.model_args, self.data_args, self.args = model_args, data_args, training_args
        self.output_dir = Path(output_dir)
        self.report = report
        self.tokenizer = None
        self.categories: dict[str, list[str]] = {}
        self.categories_to_train: list[str] = []
        self.max_length: int | None = None
        self.human = None
        self.labels = None
        self.splits: dict[str, dict[str, Any]] = {}
        self.validation_conversations: set[str] = set()
        self.skipped_categories: dict[str, str] = {}
        self.expert_data: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def is_main(self) -> bool:
        """Whether this process writes the files (process 0)."""
        return self.args.process_index == 0

    # ------------------------------------------------------------------------------------------- preparation
    def prepare(self, tokenizer, backbone_path: str, state: dict[str, Any]) -> None:
        """Load, categorise, tokenize and split the data; check each category has enough of it; pick each expert's
        labels. ``state`` is the pipeline's state: once stages finished, other splits are refused (the data or
        the split settings changed); the splits' fingerprint is recorded in it."""
        from ..data import LoadReport, load_capability_labels, load_category_spec

        self.tokenizer = tokenizer
        if not self.data_args.dataset_path and not self.data_args.dataset_name:
            raise TrainingDataError(
                "neither dataset_path nor dataset_name is set: give the human-ranked preference data to train on"
            )
        spec = load_category_spec(self.model_args.categories)
        self.categories = {key: list(caps) for key, caps in spec.categories.items()}
        wanted = self.args.categories_to_train
        self.categories_to_train = (
            [name.strip() for name in wanted.split(",") if name.strip()] if wanted else list(self.categories)
        )
        unknown = [name for name in self.categories_to_train if name not in self.categories]
        if unknown:
            raise TrainingDataError(
                f"categories_to_train names {unknown}, which are not categories of the model {list(self.categories)}"
            )
        limit = _backbone_max_length(backbone_path)
        self.max_length = (
            min(x for x in (self.args.max_length, limit) if x) if (self.args.max_length or limit) else None
        )

        load_report = LoadReport()
        human = self._load_human_pairs(load_report)
        self.report.add_load("human", load_report)
        if len(human) == 0:
            raise TrainingDataError(f"{self._data_name()}: no preference pairs (all ties or empty?)")
        if not any(human["category"]):
            column = self.data_args.category_column or "category"
            raise TrainingDataError(
                f"{self._data_name()}: none of its {len(human)} pairs has a category (the '{column}' column is "
                "missing or empty), so the router and the per-category phases have nothing to train on. Fix: add a "
                "'category' column (or 'label' in ranked records) naming one of "
                f"{sorted(self.categories)}, take it from another column with category_column (and category_map "
                "for its values, e.g. category_column: source, category_map: {gsm8k: objective_qa}), or let the "
                "LLM judge classify the prompts (categorize_with_judge: true with a label_config)"
            )
        human = resolve_categories(human, spec, self.categories, "human pairs", self.report)
        self.human = tokenize_pairs(human, self.tokenizer, self.max_length, "human pairs", self.report)
        self.labels = None
        if self.data_args.capability_labels_path:
            label_report = LoadReport()
            labels = load_capability_labels(
                self.data_args.capability_labels_path,
                skip_invalid=self.data_args.skip_invalid_records,
                report=label_report,
            )
            self.report.add_load("capability_labels", label_report)
            self.report.counts["capability_labels_read"] = len(labels)
            labels = resolve_categories(labels, spec, self.categories, "capability labels", self.report)
            self.labels = tokenize_pairs(labels, self.tokenizer, self.max_length, "capability labels", self.report)
        elif "capability" in self.args.stage_kinds:
            self.report.warn(
                "no capability_labels_path: phase 2 is skipped and every expert keeps its phase-1 initialisation "
                "(label pairs with `dmoerm label` to train the experts)"
            )
        self.splits = split_by_conversation(
            self.human, self.data_args.validation_split_ratio, self.data_args.task_split_ratio, self.args.seed
        )
        fingerprint = hashlib.sha1(json.dumps(self.splits, sort_keys=True).encode()).hexdigest()
        finished = [name for name, info in state["stages"].items() if info.get("status") == "done"]
        if state.get("splits_fingerprint") not in (None, fingerprint) and finished:
            raise TrainingDataError(
                f"the data or the split settings changed since {self.output_dir} was started (finished stages "
                f"{finished[:3]} were trained on other splits). Fix: use a new output_dir, or pass --restart true"
            )
        state["splits_fingerprint"] = fingerprint
        if self.is_main:
            atomic_write_json(self.output_dir / SPLITS_FILE, self.splits)
        validation_ids = {pid for split in self.splits.values() for pid in split["validation"]}
        self.validation_conversations = {
            conversation_key(prompt)
            for prompt, pid in zip(self.human["prompt"], self.human["pair_id"])
            if pid in validation_ids
        }
        self._check_categories()
        self.expert_data = (
            select_capability_labels(
                self.labels,
                self.categories,
                self.validation_conversations,
                self.data_args.min_capability_labels,
                [c for c in self.categories_to_train if c not in self.skipped_categories],
                self.report,
            )
            if self.labels is not None
            else {}
        )

    def _check_categories(self) -> None:
        self.skipped_categories = {}
        empty = {}
        for category in self.categories_to_train:
            split = self.splits.get(category)
            if split is None:
                empty[category] = "no human pairs"
            elif not split["task"] or not split["aggregator"]:
                n = sum(split["conversations"].values())
                empty[category] = f"only {n} conversation(s); phase 1 and phase 3 need one each"
        if not empty:
            return
        detail = "; ".join(f"{category}: {reason}" for category, reason in empty.items())
        if not self.data_args.skip_empty_categories:
            raise TrainingDataError(
                f"categories without enough human data: {detail}. Their rewards would be untrained. Fix: add data, "
                "remove them from the category set, or pass --skip_empty_categories true to skip them (reported)"
            )
        self.report.counts["categories_skipped_no_data"] += len(empty)
        self.report.warn(f"skipping categories without enough human data: {detail}")
        self.skipped_categories = empty

    def _data_name(self) -> str:
        args = self.data_args
        if args.dataset_path:
            return args.dataset_path
        return f"{args.dataset_name} ({args.dataset_config or 'default'}, {args.dataset_train_split})"

    def _load_human_pairs(self, report, with_judge_categories: bool = True):
        """The human pairs from ``dataset_path`` or ``dataset_name``, categories taken as the data arguments say
        (and, unless ``with_judge_categories=False``, from the judge's classification where the data has none)."""
        from ..data import DataValidationError, load_dataset_split, load_preference_pairs

        args = self.data_args
        try:
            source = (
                load_dataset_split(args.dataset_name, args.dataset_config, args.dataset_train_split)
                if args.dataset_name
                else args.dataset_path
            )
            pairs = load_preference_pairs(
                source,
                lower_rank_is_better=args.lower_rank_is_better,
                skip_invalid=args.skip_invalid_records,
                report=report,
                category_column=args.category_column,
                category_map=args.category_map,
            )
        except DataValidationError:
            raise
        except ValueError as err:
            raise TrainingDataError(str(err)) from None
        judged = self._judge_categories() if with_judge_categories else {}
        if judged:
            pairs = pairs.map(
                lambda row: {"category": row["category"] or judged.get(conversation_key(row["prompt"]), "")},
                desc="Judge categories",
            )
            report.uncategorised_pairs = sum(1 for category in pairs["category"] if not category)
        return pairs

    # ---------------------------------------------------------------------------------------------- labeling
    def _judge_categories(self) -> dict[str, str]:
        """conversation key -> category, from the judge's classification (``categorize_with_judge``), if it ran."""
        from .labeling_step import CATEGORIES_FILE

        path = self.output_dir / "labels" / CATEGORIES_FILE
        if not self.data_args.categorize_with_judge or not path.exists():
            return {}
        rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        return {row["key"]: row["category"] for row in rows if row.get("category")}

    def categorize_with_judge(self) -> None:
        """Uncategorised pairs: their prompts are classified by the judge (cached, so reruns make no calls)."""
        from ..data import LoadReport, load_category_spec
        from .labeling_step import categorize_prompts

        if self.is_main:
            # every prompt the data leaves uncategorised (answers are cached: a rerun makes no calls)
            pairs = self._load_human_pairs(LoadReport(), with_judge_categories=False)
            prompts = [prompt for prompt, category in zip(pairs["prompt"], pairs["category"]) if not category]
            if prompts:
                report = categorize_prompts(
                    self.data_args.label_config,
                    prompts,
                    load_category_spec(self.model_args.categories),
                    self.output_dir,
                )
                self.report.counts.update(
                    {f"judge_categories_{k}": v for k, v in report.items() if isinstance(v, int)}
                )
                if report["consistency"] is not None:
                    self.report.counts["judge_categories_consistency_percent"] = round(100 * report["consistency"])
        wait_for_everyone()

    def labeling_source(self) -> str:
        """What the labeler reads: ``dataset_path`` as is, or (for ``dataset_name`` / a category column or map) the
        loaded pairs with their categories, written once to ``labels/human_pairs.jsonl``."""
        from ..data import LoadReport, write_jsonl_atomic

        args = self.data_args
        if not (args.dataset_name or args.category_column or args.category_map or args.categorize_with_judge):
            return args.dataset_path
        pairs = self._load_human_pairs(LoadReport())
        path = self.output_dir / "labels" / "human_pairs.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = ("prompt", "chosen", "rejected", "category")
        write_jsonl_atomic(({name: row[name] for name in columns} for row in pairs if row["category"]), path)
        return str(path)

    # ------------------------------------------------------------------------------------------------ routing
    def uncategorised_rows(self) -> list[int]:
        """Indices of the human pairs without a category (the trained router assigns theirs)."""
        return [i for i, category in enumerate(self.human["category"]) if not category]

    def route(self, model, rows: list[int]) -> dict[str, str]:
        """pair id -> category, as ``model``'s router reads the prompts of the human pairs at ``rows``."""
        import torch

        from ..data.batching import pad_sequences
        from ..data.tokenize import routing_prompt

        pairs = self.human.select(rows)
        routed = {}
        with torch.no_grad():
            for start in range(0, len(pairs), 32):
                batch = pairs.select(range(start, min(start + 32, len(pairs))))
                # What the router reads at inference: the prompt (up to the chat template's assistant opener;
                # a text pair's prompt tokens), which it then reads whole.
                opener = model.config.assistant_opener_ids
                ids = [routing_prompt(row, opener, f"pair {row['pair_id']}") for row in batch]
                input_ids, mask = pad_sequences(ids, self.tokenizer.pad_token_id)
                logits = model.route(input_ids, mask, prompt_mask=mask)
                for pid, index in zip(batch["pair_id"], logits.argmax(-1).tolist()):
                    routed[pid] = model.config.category_names[index]
        return routed

    def add_routed(self, routed: dict[str, str], rows: list[int]) -> None:
        """The routed pairs (``routed``: pair id -> category) get their categories and are split like the others."""
        self.human = self.human.map(
            lambda row: {"category": routed.get(row["pair_id"], row["category"])}, desc="Routing uncategorised pairs"
        )
        routed_rows = self.human.select(rows)
        extra = split_by_conversation(
            routed_rows, self.data_args.validation_split_ratio, self.data_args.task_split_ratio, self.args.seed
        )
        for category, split in extra.items():
            target = self.splits.setdefault(
                category,
                {
                    "task": [],
                    "aggregator": [],
                    "validation": [],
                    "conversations": {"task": 0, "aggregator": 0, "validation": 0},
                },
            )
            for name in ("task", "aggregator", "validation"):
                target[name] = target[name] + split[name]
                target["conversations"][name] += split["conversations"][name]
        self.report.counts["human_pairs_routed"] = len(rows)
        if self.is_main:
            atomic_write_json(self.output_dir / SPLITS_FILE, self.splits)

    # ----------------------------------------------------------------------------------------------- stages
    def stage_data(self, stage: Stage):
        """(train, validation) rows of ``stage``: human pairs of its split(s), or an expert's capability labels."""

        def human_rows(split_name, categories):
            ids = [pid for c in categories for pid in self.splits.get(c, {}).get(split_name, [])]
            return rows_with_ids(self.human, ids)

        if stage.kind == "router":
            labelled = [c for c in self.categories if c in self.splits]
            train = human_rows("task", labelled)
            train = _concat(train, human_rows("aggregator", labelled))
            return train, human_rows("validation", labelled)
        if stage.kind == "task":
            return human_rows("task", [stage.category]), human_rows("validation", [stage.category])
        if stage.kind == "capability":
            entry = self.expert_data[(stage.category, stage.capability)]
            return entry["train"], entry["validation"]
        if stage.kind == "aggregator":
            return human_rows("aggregator", [stage.category]), human_rows("validation", [stage.category])
        categories = list(self.splits)
        train = _concat(human_rows("task", categories), human_rows("aggregator", categories))
        return train, human_rows("validation", categories)


def _backbone_max_length(backbone_path: str) -> int | None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(backbone_path)
    return getattr(config, "max_position_embeddings", None)


def _concat(first, second):
    from datasets import concatenate_datasets

    return concatenate_datasets([first, second])
