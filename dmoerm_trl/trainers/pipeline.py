"""The whole DMoERM training run: router, then per category phase 1 (task), 2 (experts), 3 (aggregator).

Everything goes into one folder, which ``DMoERMForSequenceClassification.from_pretrained`` loads at the end::

    <output_dir>/
      config.json, dmoerm_heads.safetensors, adapters/, README.md, tokenizer files   the trained DMoERM
      pipeline_state.json       finished stages (the commit point of each stage), splits fingerprint
      splits.json               which human pairs went to phase 1 / phase 3 / validation (by conversation)
      training_summary.json     per-stage metrics and times, data counts, skips and warnings
      stages/<stage>/           a stage's Trainer folder: checkpoint-N/ (resumable), final.safetensors,
                                log_history.json (and features.safetensors for phase 3)
      baseline/                 the single-RM baseline, when trained
      backbone/                 the tiny test backbone, with tiny_backbone: ...

Resuming: rerunning the same command skips finished stages (``pipeline_state.json``) and resumes an unfinished
stage from its newest complete checkpoint (a checkpoint interrupted by ``kill -9`` is discarded). Every file of the
pipeline is written to a temporary name and renamed into place.

Each stage gets a model with the finished stages' tensors loaded: under DDP/DeepSpeed a fresh one built from the
backbone (a model that went through a DDP wrapper or a DeepSpeed engine is not reusable), in one plain process the
same model for every stage.

Example:
    >>> from dmoerm_trl.trainers import DMoERMTrainingPipeline
    >>> pipeline = DMoERMTrainingPipeline(model_args, data_args, training_args)  # doctest: +SKIP
    >>> summary = pipeline.run()  # doctest: +SKIP
    >>> summary["stages"]["aggregator/chitchat"]["metrics"]["eval_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from .checkpointing import atomic_save_tensors, atomic_write_json, last_complete_checkpoint, load_tensors_into
from .preference_data import (
    DataReport,
    TrainingDataError,
    conversation_key,
    resolve_categories,
    rows_with_ids,
    select_capability_labels,
    split_by_conversation,
    tokenize_pairs,
)
from .stage import Stage, without_zero3_init

logger = logging.getLogger(__name__)

STATE_FILE = "pipeline_state.json"
SUMMARY_FILE = "training_summary.json"
SPLITS_FILE = "splits.json"
FINAL_WEIGHTS = "final.safetensors"


class DMoERMTrainingPipeline:
    """Runs (and resumes) the DMoERM training pipeline described in the module docstring.

    Args:
        model_args: [`DMoERMModelArguments`].
        data_args: [`DMoERMDataArguments`].
        training_args: [`DMoERMTrainingConfig`].
        callbacks: extra `TrainerCallback`s given to every stage's Trainer.
    """

    def __init__(self, model_args, data_args, training_args, callbacks=None):
        self.model_args, self.data_args, self.args = model_args, data_args, training_args
        self.callbacks = list(callbacks or [])
        self.output_dir = Path(training_args.output_dir)
        self.stages_dir = self.output_dir / "stages"
        self.report = DataReport()
        self.state: dict[str, Any] = {}
        self.ran_stages: list[str] = []

    # ------------------------------------------------------------------------------------------ processes, files
    @property
    def is_main(self) -> bool:
        return self.args.process_index == 0

    def _barrier(self) -> None:
        from accelerate import PartialState

        PartialState().wait_for_everyone()

    def _read_state(self) -> dict[str, Any]:
        path = self.output_dir / STATE_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"version": 1, "stages": {}}

    def _write_state(self) -> None:
        if self.is_main:
            atomic_write_json(self.output_dir / STATE_FILE, self.state)
        self._barrier()

    def _status(self, stage: Stage) -> str | None:
        return self.state["stages"].get(stage.name, {}).get("status")

    # ---------------------------------------------------------------------------------------------- setup
    def _prepare_output_dir(self) -> None:
        if self.args.restart and self.is_main and self.output_dir.exists():
            logger.warning("restart: deleting the finished stages and checkpoints in %s", self.output_dir)
            shutil.rmtree(self.stages_dir, ignore_errors=True)
            for name in (STATE_FILE, SPLITS_FILE, SUMMARY_FILE):
                (self.output_dir / name).unlink(missing_ok=True)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(
                self.output_dir / "run_config.json",
                {
                    "model_args": dataclasses.asdict(self.model_args),
                    "data_args": dataclasses.asdict(self.data_args),
                    "training_args": self.args.to_json_dict(),
                },
            )
        self._barrier()
        self.state = self._read_state()

    def _backbone_path(self) -> str:
        if not self.model_args.tiny_backbone:
            path = self.model_args.model_name_or_path
            looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1
            if looks_local and not Path(path).expanduser().is_dir():
                raise TrainingDataError(
                    f"model_name_or_path {path!r} is not a folder; give a local folder of a saved model "
                    "(save_pretrained) or a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct'"
                )
            return path
        path = (self.output_dir / "backbone").resolve()
        if self.is_main and not (path / "config.json").exists():
            from .. import testing_utils

            tmp = path.with_name(".backbone-tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            size = {"hidden_size": self.model_args.tiny_backbone_hidden_size}
            with without_zero3_init():  # built on the main process only: no collective partitioning
                if self.model_args.tiny_backbone == "bert":
                    testing_utils.make_tiny_bert(tmp, num_layers=self.model_args.tiny_backbone_num_layers, **size)
                else:
                    testing_utils.make_tiny_llama(tmp, num_layers=self.model_args.tiny_backbone_num_layers, **size)
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
        self._barrier()
        return str(path)

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.backbone_path)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise TrainingDataError(
                    f"the tokenizer of {self.backbone_path} has neither a pad nor an EOS token; add a pad token "
                    "(tokenizer.add_special_tokens({'pad_token': '<pad>'}) and save it) before training"
                )
            logger.info("The tokenizer has no pad token; using its EOS token %r for padding (as TRL does).",
                        tokenizer.eos_token)
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    @property
    def _single_process(self) -> bool:
        return self.args.world_size == 1 and getattr(self.args, "deepspeed_plugin", None) is None and not (
            self.args.deepspeed
        )

    def _build_model(self):
        """The model for the next stage, with every finished stage loaded.

        One process without DeepSpeed: one model, reused by every stage (building a DMoERM with many adapters on a
        real backbone takes tens of seconds). DDP/DeepSpeed: a fresh model per stage, since a model that went
        through a DDP wrapper or a DeepSpeed engine keeps their hooks and shards.
        """
        import torch
        from transformers import set_seed

        from ..modeling_dmoerm import DMoERMForSequenceClassification

        if self._single_process and getattr(self, "_model", None) is not None:
            self._model.set_training_stage(None)
            self._load_finished_stages(self._model)
            return self._model
        dtype = self.model_args.dtype
        kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
        set_seed(self.args.seed)  # untrained parts (e.g. of skipped stages) get the same init in every stage
        with without_zero3_init():
            model = DMoERMForSequenceClassification.from_backbone(
                self.backbone_path,
                categories=self.categories,
                tokenizer=self.tokenizer,
                lora_r=self.model_args.lora_r,
                lora_alpha=self.model_args.lora_alpha,
                lora_dropout=self.model_args.lora_dropout,
                lora_target_modules=self.model_args.lora_target_modules,
                aggregator_hidden_size=self.model_args.aggregator_hidden_size,
                router_mode=self.model_args.router_mode,
                pooling=self.model_args.pooling,
                task_mode=self.model_args.task_mode,
                **kwargs,
            )
            self._load_finished_stages(model)
        if self._single_process:
            self._model = model
        return model

    def _load_finished_stages(self, model) -> None:
        """Finished stages' tensors, in pipeline order; experts start as copies of their task adapter (phase 2)."""
        for stage in self.plan:
            if stage.kind == "baseline":
                continue
            if self._status(stage) == "done":
                load_tensors_into(model, self.stages_dir / stage.dirname / FINAL_WEIGHTS)
                if stage.kind == "task":
                    model.init_experts_from_task(stage.category)

    # ------------------------------------------------------------------------------------------------- data
    def _prepare_data(self) -> None:
        from ..data import LoadReport, load_capability_labels, load_category_spec, load_preference_pairs

        if not self.data_args.dataset_path:
            raise TrainingDataError("dataset_path is not set: give the human-ranked preference data to train on")
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
        self.max_length = min(x for x in (self.args.max_length, limit) if x) if (self.args.max_length or limit) else None

        load_report = LoadReport()
        human = load_preference_pairs(
            self.data_args.dataset_path,
            lower_rank_is_better=self.data_args.lower_rank_is_better,
            skip_invalid=self.data_args.skip_invalid_records,
            report=load_report,
        )
        self.report.counts.update({f"human_{k}": v for k, v in load_report.to_dict().items() if isinstance(v, int)})
        if len(human) == 0:
            raise TrainingDataError(f"{self.data_args.dataset_path}: no preference pairs (all ties or empty?)")
        human = resolve_categories(human, spec, self.categories, "human pairs", self.report)
        self.human = tokenize_pairs(human, self.tokenizer, self.max_length, "human pairs", self.report)
        self.labels = None
        if self.data_args.capability_labels_path:
            label_report = LoadReport()
            labels = load_capability_labels(
                self.data_args.capability_labels_path, skip_invalid=self.data_args.skip_invalid_records,
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

    def _set_validation_conversations(self) -> None:
        validation_ids = {pid for split in self.splits.values() for pid in split["validation"]}
        self.validation_conversations = {
            conversation_key(prompt)
            for prompt, pid in zip(self.human["prompt"], self.human["pair_id"])
            if pid in validation_ids
        }

    def _run_labeling(self) -> None:
        """The optional first step: capability labels from an LLM judge (``label_config``), into ``labels/``."""
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
                    self.data_args.label_config, self.data_args.dataset_path, load_category_spec(self.model_args.categories),
                    self.output_dir, lower_rank_is_better=self.data_args.lower_rank_is_better,
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

    def _plan(self) -> list[Stage]:
        plan = [Stage("router")]
        for category in self.categories_to_train:
            plan.append(Stage("task", category))
            plan += [Stage("capability", category, capability) for capability in self.categories[category]]
            plan.append(Stage("aggregator", category))
        plan.append(Stage("baseline"))
        return plan

    def _skip_reason(self, stage: Stage) -> str | None:
        if stage.kind not in self.args.stage_kinds:
            return f"stage kind {stage.kind!r} not selected (stages={self.args.stages!r})"
        if stage.category in self.skipped_categories:
            return f"category skipped: {self.skipped_categories[stage.category]}"
        if stage.kind == "capability":
            if self.labels is None:
                return "no capability labels (capability_labels_path not set)"
            entry = self.expert_data[(stage.category, stage.capability)]
            if "skip" in entry:
                return entry["skip"]
        return None

    def _route_unlabeled(self) -> None:
        """Records without a category: routed by the trained router (prompt only), then split like the others."""
        import torch

        unlabeled = [i for i, category in enumerate(self.human["category"]) if not category]
        if not unlabeled:
            return
        if not self.data_args.route_unlabeled or self._status(Stage("router")) != "done":
            why = "route_unlabeled is false" if not self.data_args.route_unlabeled else "the router is not trained"
            self.report.counts["human_pairs_without_category_dropped"] = len(unlabeled)
            self.report.warn(f"{len(unlabeled)} human pairs have no category and are not used ({why})")
            return
        if "routing" not in self.state:
            model = self._build_model()
            model.set_training_stage("router")
            model.eval()
            rows = self.human.select(unlabeled)
            routed = {}
            with torch.no_grad():
                for start in range(0, len(rows), 32):
                    batch = rows[start : start + 32]
                    ids = batch["prompt_ids"]
                    length = max(len(x) for x in ids)
                    input_ids = torch.full((len(ids), length), self.tokenizer.pad_token_id, dtype=torch.long)
                    mask = torch.zeros_like(input_ids)
                    for j, x in enumerate(ids):
                        input_ids[j, : len(x)], mask[j, : len(x)] = torch.as_tensor(x), 1
                    logits = model(input_ids=input_ids, attention_mask=mask).logits
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
            target = self.splits.setdefault(category, {"task": [], "aggregator": [], "validation": [],
                                                       "conversations": {"task": 0, "aggregator": 0,
                                                                         "validation": 0}})
            for name in ("task", "aggregator", "validation"):
                target[name] = target[name] + split[name]
                target["conversations"][name] += split["conversations"][name]
        self.report.counts["human_pairs_routed"] = len(unlabeled)
        if self.is_main:
            atomic_write_json(self.output_dir / SPLITS_FILE, self.splits)

    # ------------------------------------------------------------------------------------------------- stages
    def _stage_args(self, stage: Stage, has_validation: bool):
        kind = stage.kind
        overrides = {
            "output_dir": str(self.stages_dir / stage.dirname),
            "learning_rate": self.args.phase_value(kind, "learning_rate"),
            "num_train_epochs": self.args.phase_value(kind, "num_train_epochs"),
            "run_name": f"{self.args.run_name or self.output_dir.name}-{stage.dirname}",
            "max_length": self.max_length,
            "restart": False,
            "push_to_hub": False,  # a stage is part of a model; `dmoerm push` uploads the finished DMoERM
        }
        if not has_validation:
            overrides.update(eval_strategy="no", load_best_model_at_end=False, metric_for_best_model=None)
        return dataclasses.replace(self.args, **overrides)

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

    def _make_trainer(self, stage: Stage, model, args, train, validation, callbacks):
        from .aggregator_trainer import AggregatorTrainer
        from .capability_expert_trainer import CapabilityExpertTrainer
        from .router_trainer import RouterTrainer
        from .task_trainer import TaskTrainer

        common = {"args": args, "processing_class": self.tokenizer, "callbacks": callbacks}
        eval_dataset = validation if len(validation) else None
        if stage.kind == "router":
            return RouterTrainer(model, train_dataset=train, eval_dataset=eval_dataset, **common)
        if stage.kind in ("task", "capability"):
            columns = ["chosen_ids", "rejected_ids"]
            train, eval_dataset = train.select_columns(columns), (
                eval_dataset.select_columns(columns) if eval_dataset is not None else None
            )
            if stage.kind == "task":
                return TaskTrainer(model, stage.category, train_dataset=train, eval_dataset=eval_dataset, **common)
            return CapabilityExpertTrainer(
                model, stage.category, stage.capability, train_dataset=train, eval_dataset=eval_dataset, **common
            )
        return AggregatorTrainer(
            model,
            stage.category,
            train_dataset=train,
            eval_dataset=eval_dataset,
            cache_expert_features=self.args.cache_expert_features,
            feature_batch_size=self.args.feature_batch_size,
            feature_cache_path=str(self.stages_dir / stage.dirname / "features.safetensors"),
            **common,
        )

    def _run_stage(self, stage: Stage, position: str) -> None:
        from transformers import EarlyStoppingCallback

        train, validation = self._stage_data(stage)
        if len(train) == 0:
            self._mark(stage, "skipped", reason="no training data after the splits")
            return
        stage_dir = self.stages_dir / stage.dirname
        if self.is_main:
            stage_dir.mkdir(parents=True, exist_ok=True)
            resume = last_complete_checkpoint(stage_dir, remove_incomplete=True)
        self._barrier()
        resume = last_complete_checkpoint(stage_dir)
        if not len(validation):
            self.report.warn(
                f"{stage.name}: the validation split is empty; no early stopping and no best-checkpoint selection "
                "for this stage (it trains all epochs). Fix: more data or a larger validation_split_ratio"
            )
        logger.info(
            "[%s] %s: %d training pairs, %d validation pairs%s", position, stage.name, len(train), len(validation),
            f", resuming from {resume}" if resume else "",
        )
        args = self._stage_args(stage, has_validation=bool(len(validation)))
        callbacks = list(self.callbacks)
        if len(validation) and self.args.early_stopping_patience is not None and args.eval_strategy != "no":
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=self.args.early_stopping_patience))
        model = self._build_model()
        trainer = self._make_trainer(stage, model, args, train, validation, callbacks)
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - start
        metrics = trainer.evaluate() if len(validation) else {}
        tensors = trainer.stage_state_dict()
        if self.is_main:
            atomic_save_tensors(tensors, stage_dir / FINAL_WEIGHTS, {"dmoerm_stage": stage.name})
            atomic_write_json(stage_dir / "log_history.json", trainer.state.log_history)
        self._mark(
            stage, "done", metrics=metrics, train_seconds=round(seconds, 3), resumed_from=resume,
            num_train=len(train), num_validation=len(validation), global_step=trainer.state.global_step,
        )
        self.ran_stages.append(stage.name)
        del trainer, model
        gc.collect()

    def _mark(self, stage: Stage, status: str, **info) -> None:
        self.state["stages"][stage.name] = {"status": status, **info}
        if status == "skipped":
            logger.warning("%s: skipped (%s)", stage.name, info.get("reason"))
        self._write_state()

    # ----------------------------------------------------------------------------------------------- results
    def _export(self) -> None:
        model = self._build_model()
        model.set_training_stage(None)
        model.model_card_metrics = {
            name: info["metrics"] for name, info in self.state["stages"].items() if info.get("metrics")
        }
        if self.is_main:
            tmp = self.output_dir / ".export-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, save_base=self.model_args.save_base_model)
            self.tokenizer.save_pretrained(tmp)
            for entry in sorted(tmp.iterdir()):
                target = self.output_dir / entry.name
                if entry.is_dir() and target.exists():
                    old = self.output_dir / f".old-{entry.name}"
                    shutil.rmtree(old, ignore_errors=True)
                    target.rename(old)
                    entry.rename(target)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    entry.replace(target)
            shutil.rmtree(tmp, ignore_errors=True)
        self.state["exported_after"] = sorted(
            n for n, i in self.state["stages"].items() if i["status"] == "done" and n not in ("baseline", "label")
        )
        self._write_state()
        del model

    def _summary(self, seconds: float) -> dict[str, Any]:
        summary = {
            "output_dir": str(self.output_dir),
            "backbone": self.backbone_path,
            "categories": self.categories,
            "stages": self.state["stages"],
            "ran_this_time": self.ran_stages,
            "splits": {c: {k: len(v) for k, v in s.items() if k != "conversations"} for c, s in self.splits.items()},
            "data": self.report.to_dict(),
            "wall_seconds_this_time": round(seconds, 2),
        }
        if self.is_main:
            atomic_write_json(self.output_dir / SUMMARY_FILE, summary)
        return summary

    def run(self) -> dict[str, Any]:
        """Run every stage that is not finished; export the model; return the summary (also saved as JSON)."""
        start = time.perf_counter()
        if self.args.torch_num_threads:
            import torch

            torch.set_num_threads(self.args.torch_num_threads)
        self.skipped_categories: dict[str, str] = {}
        self._prepare_output_dir()
        self.backbone_path = self._backbone_path()
        self.tokenizer = self._load_tokenizer()
        self._run_labeling()
        self._prepare_data()
        self._check_categories()
        self.expert_data = (
            select_capability_labels(
                self.labels, self.categories, self.validation_conversations, self.data_args.min_capability_labels,
                [c for c in self.categories_to_train if c not in self.skipped_categories], self.report,
            )
            if self.labels is not None
            else {}
        )
        self.plan = self._plan()
        self._write_state()
        routed = False
        for index, stage in enumerate(self.plan, start=1):
            position = f"{index}/{len(self.plan)}"
            if stage.kind != "router" and not routed:
                self._route_unlabeled()
                routed = True
            if self._status(stage) == "done":
                logger.info("[%s] %s: already finished, skipped", position, stage.name)
                continue
            reason = self._skip_reason(stage)
            if reason is not None:
                if self._status(stage) != "skipped" or self.state["stages"][stage.name].get("reason") != reason:
                    self._mark(stage, "skipped", reason=reason)
                continue
            if stage.kind == "baseline":
                self._run_baseline(stage)
            else:
                self._run_stage(stage, position)
        finished = sorted(n for n, i in self.state["stages"].items()
                          if i["status"] == "done" and n not in ("baseline", "label"))
        if finished and finished != sorted(self.state.get("exported_after", [])):
            self._export()
        return self._summary(time.perf_counter() - start)

    def _run_baseline(self, stage: Stage) -> None:
        from .baseline import train_baseline_reward_model

        train, validation = self._stage_data(stage)
        start = time.perf_counter()
        metrics = train_baseline_reward_model(
            self.backbone_path,
            self.tokenizer,
            train,
            validation,
            self._stage_args(stage, has_validation=bool(len(validation))),
            output_dir=self.output_dir / "baseline",
            use_lora=self.args.baseline_use_lora,
            lora_r=self.model_args.lora_r,
            lora_alpha=self.model_args.lora_alpha,
            lora_dropout=self.model_args.lora_dropout,
            lora_target_modules=self.model_args.lora_target_modules,
            early_stopping_patience=self.args.early_stopping_patience,
            callbacks=self.callbacks,
        )
        self._mark(stage, "done", metrics=metrics, train_seconds=round(time.perf_counter() - start, 3),
                   num_train=len(train), num_validation=len(validation))
        self.ran_stages.append(stage.name)


def _concat(first, second):
    from datasets import concatenate_datasets

    return concatenate_datasets([first, second])
