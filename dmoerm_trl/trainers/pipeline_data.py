"""The data side of the DMoERM pipeline: load, categorise, tokenize and split the pairs; the optional labeling step;
routing of uncategorised records; which rows each stage trains and validates on. Mixed into
[`DMoERMTrainingPipeline`]."""

from __future__ import annotations

import hashlib
import json

from ..data.errors import TrainingDataError
from ..data.formats import conversation_key
from ..data.splits import resolve_categories, rows_with_ids, split_by_conversation
from ..data.tokenize import tokenize_pairs
from .checkpointing import atomic_write_json
from .stage import Stage

SPLITS_FILE = "splits.json"


class PipelineDataMixin:
    """Data preparation of [`DMoERMTrainingPipeline`] (uses its state, report, tokenizer and model builder)."""

    def _prepare_data(self) -> None:
        from ..data import LoadReport, load_capability_labels, load_category_spec

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
        limit = self._backbone_max_length()
        self.max_length = (
            min(x for x in (self.args.max_length, limit) if x) if (self.args.max_length or limit) else None
        )

        load_report = LoadReport()
        human = self._load_human_pairs(load_report)
        self.report.counts.update({f"human_{k}": v for k, v in load_report.to_dict().items() if isinstance(v, int)})
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
        finished = [name for name, info in self.state["stages"].items() if info.get("status") == "done"]
        if self.state.get("splits_fingerprint") not in (None, fingerprint) and finished:
            raise TrainingDataError(
                f"the data or the split settings changed since {self.output_dir} was started (finished stages "
                f"{finished[:3]} were trained on other splits). Fix: use a new output_dir, or pass --restart true"
            )
        self.state["splits_fingerprint"] = fingerprint
        if self.is_main:
            atomic_write_json(self.output_dir / SPLITS_FILE, self.splits)
        self._set_validation_conversations()

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

    def _judge_categories(self) -> dict[str, str]:
        """conversation key -> category, from the judge's classification (``categorize_with_judge``), if it ran."""
        from .labeling_step import CATEGORIES_FILE

        path = self.output_dir / "labels" / CATEGORIES_FILE
        if not self.data_args.categorize_with_judge or not path.exists():
            return {}
        rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        return {row["key"]: row["category"] for row in rows if row.get("category")}

    def _categorize_with_judge(self) -> None:
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
        self._barrier()

    def _labeling_source(self) -> str:
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

    def _set_validation_conversations(self) -> None:
        validation_ids = {pid for split in self.splits.values() for pid in split["validation"]}
        self.validation_conversations = {
            conversation_key(prompt)
            for prompt, pid in zip(self.human["prompt"], self.human["pair_id"])
            if pid in validation_ids
        }

    def _run_labeling(self) -> None:
        """The optional first step: categories for uncategorised pairs (``categorize_with_judge``) and capability
        labels from an LLM judge (``label_config``), into ``labels/``."""
        if self.data_args.categorize_with_judge:
            self._categorize_with_judge()
        if not self.data_args.label_config or self.data_args.capability_labels_path:
            return
        from ..data import load_category_spec
        from ..labeling.labeler import LABELS_FILE
        from .labeling_step import label_capabilities

        stage = Stage("label")
        labels_dir = self.output_dir / "labels"
        if "label" in self.args.stage_kinds and self._status(stage) != "done":
            summary = None
            if self.is_main:
                summary = label_capabilities(
                    self.data_args.label_config,
                    self._labeling_source(),
                    load_category_spec(self.model_args.categories),
                    self.output_dir,
                    lower_rank_is_better=self.data_args.lower_rank_is_better,
                )
            self._barrier()
            self._mark(stage, "done", labels=summary["labels"] if summary else None)
        if (labels_dir / LABELS_FILE).exists():
            self.data_args.capability_labels_path = str(labels_dir / LABELS_FILE)

    def _backbone_max_length(self) -> int | None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.backbone_path)
        return getattr(config, "max_position_embeddings", None)

    def _check_categories(self) -> None:
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

    def _route_unlabeled(self) -> None:
        """Records without a category: routed by the trained router (prompt only), then split like the others."""
        import torch

        from ..data.batching import pad_sequences
        from ..data.tokenize import routing_prompt

        unlabeled = [i for i, category in enumerate(self.human["category"]) if not category]
        if not unlabeled:
            return
        if not self.data_args.route_unlabeled or self._status(Stage("router")) != "done":
            why = "route_unlabeled is false" if not self.data_args.route_unlabeled else "the router is not trained"
            self.report.counts["human_pairs_without_category_dropped"] = len(unlabeled)
            self.report.warn(f"{len(unlabeled)} human pairs have no category and are not used ({why})")
            return
        if "routing" not in self.state:
            model = self._build_model().eval()
            rows = self.human.select(unlabeled)
            routed = {}
            with torch.no_grad():
                for start in range(0, len(rows), 32):
                    batch = rows.select(range(start, min(start + 32, len(rows))))
                    # What the router reads at inference: the prompt (up to the chat template's assistant opener;
                    # a text pair's prompt tokens), which it then reads whole.
                    opener = model.config.assistant_opener_ids
                    ids = [routing_prompt(row, opener, f"pair {row['pair_id']}") for row in batch]
                    input_ids, mask = pad_sequences(ids, self.tokenizer.pad_token_id)
                    logits = model.route(input_ids, mask, prompt_mask=mask)
                    for pid, index in zip(batch["pair_id"], logits.argmax(-1).tolist()):
                        routed[pid] = model.config.category_names[index]
            self.state["routing"] = routed
            self._write_state()
            del model
        routed = self.state["routing"]
        self.human = self.human.map(
            lambda row: {"category": routed.get(row["pair_id"], row["category"])}, desc="Routing uncategorised pairs"
        )
        routed_rows = self.human.select(unlabeled)
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
        self.report.counts["human_pairs_routed"] = len(unlabeled)
        if self.is_main:
            atomic_write_json(self.output_dir / SPLITS_FILE, self.splits)

    def _stage_data(self, stage: Stage):
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


def _concat(first, second):
    from datasets import concatenate_datasets

    return concatenate_datasets([first, second])
