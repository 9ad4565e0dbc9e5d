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
stage from its newest complete checkpoint (a checkpoint interrupted by ``kill -9`` is discarded), early-stopping
count included. A rerun whose settings differ from ``run_config.json`` in a key that can change the result is
refused (``run_config.py``; ``--restart true`` starts over). Every file of the pipeline is written to a temporary
name and renamed into place.

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
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ..data.errors import DataReport, TrainingDataError
from ..utils.io import atomic_path, replace_path
from .checkpointing import atomic_save_tensors, atomic_write_json, last_complete_checkpoint, load_tensors_into
from .pipeline_data import PipelineData
from .run_config import RUN_CONFIG_FILE, build_run_config, check_rerun, delete_results
from .run_end import check_push_settings, final_metrics, log_final_metrics, push_trained_model
from .stage import Stage, wait_for_everyone, without_zero3_init

logger = logging.getLogger(__name__)

STATE_FILE = "pipeline_state.json"
SUMMARY_FILE = "training_summary.json"
FINAL_WEIGHTS = "final.safetensors"


class DMoERMTrainingPipeline:
    """Runs (and resumes) the DMoERM training pipeline described in the module docstring.

    Args:
        model_args: [`DMoERMModelArguments`].
        data_args: [`DMoERMDataArguments`].
        training_args: [`DMoERMTrainingConfig`].
        callbacks: extra `TrainerCallback`s given to every stage's Trainer.

    The data (loaded, split, routed; each stage's rows) is a [`PipelineData`] the pipeline owns, ``pipeline.data``.
    """

    def __init__(self, model_args, data_args, training_args, callbacks=None):
        self.model_args, self.data_args, self.args = model_args, data_args, training_args
        self.callbacks = list(callbacks or [])
        self.output_dir = Path(training_args.output_dir)
        self.stages_dir = self.output_dir / "stages"
        self.report = DataReport()
        self.data = PipelineData(model_args, data_args, training_args, self.output_dir, self.report)
        self.state: dict[str, Any] = {}
        self.ran_stages: list[str] = []
        self.backbone_path: str | None = None  # set by run(): the backbone folder or hub id
        self.tokenizer = None  # set by run()
        self.plan: list[Stage] = []  # set by run(): every stage, in order
        self._model = None  # the model every stage reuses in one plain process (see _build_model)

    # ------------------------------------------------------------------------------------------ processes, files
    @property
    def is_main(self) -> bool:
        return self.args.process_index == 0

    def _barrier(self) -> None:
        wait_for_everyone()

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
        # run_config.json always describes what is in the folder: a rerun with result-changing settings is refused
        # (trainers/run_config.py); --restart deletes the old results first.
        run_config = build_run_config(self.model_args, self.data_args, self.args)
        if self.args.restart and self.is_main and self.output_dir.exists():
            logger.warning("restart: deleting the finished stages, checkpoints and model in %s", self.output_dir)
            delete_results(self.output_dir)
        elif not self.args.restart and check_rerun(self.output_dir, run_config, self._read_state()) and self.is_main:
            delete_results(self.output_dir)  # nothing trained yet: only stale leftovers (e.g. a tiny backbone)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.output_dir / RUN_CONFIG_FILE, run_config)
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

            size = {"hidden_size": self.model_args.tiny_backbone_hidden_size}
            # built on the main process only: no collective partitioning
            with without_zero3_init(), atomic_path(path, directory=True) as tmp:
                if self.model_args.tiny_backbone == "bert":
                    testing_utils.make_tiny_bert(tmp, num_layers=self.model_args.tiny_backbone_num_layers, **size)
                else:
                    testing_utils.make_tiny_llama(tmp, num_layers=self.model_args.tiny_backbone_num_layers, **size)
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
            logger.info(
                "The tokenizer has no pad token; using its EOS token %r for padding (as TRL does).",
                tokenizer.eos_token,
            )
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    @property
    def _single_process(self) -> bool:
        return (
            self.args.world_size == 1
            and getattr(self.args, "deepspeed_plugin", None) is None
            and not (self.args.deepspeed)
        )

    def _build_model(self):
        """The model for the next stage, with every finished stage loaded.

        One process without DeepSpeed: one model, reused by every stage (building a DMoERM with many adapters on a
        real backbone takes tens of seconds). DDP/DeepSpeed: a fresh model per stage, since a model that went
        through a DDP wrapper or a DeepSpeed engine keeps their hooks and shards.
        """
        import torch
        from transformers import set_seed

        from ..models.dmoerm.modeling_dmoerm import DMoERMForSequenceClassification

        if self._single_process and self._model is not None:
            self._model.set_training_stage(None)
            self._load_finished_stages(self._model)
            return self._model
        dtype = self.model_args.dtype
        kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
        set_seed(self.args.seed)  # untrained parts (e.g. of skipped stages) get the same init in every stage
        with without_zero3_init():
            model = DMoERMForSequenceClassification.from_backbone(
                self.backbone_path,
                categories=self.data.categories,
                tokenizer=self.tokenizer,
                lora_r=self.model_args.lora_r,
                lora_alpha=self.model_args.lora_alpha,
                lora_dropout=self.model_args.lora_dropout,
                lora_target_modules=self.model_args.lora_target_modules,
                aggregator_hidden_size=self.model_args.aggregator_hidden_size,
                router_mode=self.model_args.router_mode,
                pooling=self.model_args.pooling,
                task_mode=self.model_args.task_mode,
                router_pooling=self.model_args.router_pooling,
                trunk_layers=self.model_args.trunk_layers,
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

    def _plan(self) -> list[Stage]:
        plan = [Stage("router")]
        for category in self.data.categories_to_train:
            plan.append(Stage("task", category))
            plan += [Stage("capability", category, capability) for capability in self.data.categories[category]]
            plan.append(Stage("aggregator", category))
        plan.append(Stage("baseline"))
        return plan

    def _skip_reason(self, stage: Stage) -> str | None:
        if stage.kind not in self.args.stage_kinds:
            return f"stage kind {stage.kind!r} not selected (stages={self.args.stages!r})"
        if stage.category in self.data.skipped_categories:
            return f"category skipped: {self.data.skipped_categories[stage.category]}"
        if stage.kind == "capability":
            if self.data.labels is None:
                return "no capability labels (capability_labels_path not set)"
            entry = self.data.expert_data[(stage.category, stage.capability)]
            if "skip" in entry:
                return entry["skip"]
        return None

    # --------------------------------------------------------------------------- labeling and routing the data
    def _run_labeling(self) -> None:
        """The optional first step: categories for uncategorised pairs (``categorize_with_judge``) and capability
        labels from an LLM judge (``label_config``), into ``labels/``."""
        if self.data_args.categorize_with_judge:
            self.data.categorize_with_judge()
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
                    self.data.labeling_source(),
                    load_category_spec(self.model_args.categories),
                    self.output_dir,
                    lower_rank_is_better=self.data_args.lower_rank_is_better,
                )
            self._barrier()
            self._mark(stage, "done", labels=summary["labels"] if summary else None)
        if (labels_dir / LABELS_FILE).exists():
            self.data_args.capability_labels_path = str(labels_dir / LABELS_FILE)

    def _route_unlabeled(self) -> None:
        """Records without a category: routed by the trained router (prompt only; the routing is kept in the state
        file, so a rerun routes them the same), then split like the others."""
        unlabeled = self.data.uncategorised_rows()
        if not unlabeled:
            return
        if not self.data_args.route_unlabeled or self._status(Stage("router")) != "done":
            why = "route_unlabeled is false" if not self.data_args.route_unlabeled else "the router is not trained"
            self.report.counts["human_pairs_without_category_dropped"] = len(unlabeled)
            self.report.warn(f"{len(unlabeled)} human pairs have no category and are not used ({why})")
            return
        if "routing" not in self.state:
            model = self._build_model().eval()
            self.state["routing"] = self.data.route(model, unlabeled)
            self._write_state()
            del model
        self.data.add_routed(self.state["routing"], unlabeled)

    # ------------------------------------------------------------------------------------------------- stages
    def _stage_args(self, stage: Stage, has_validation: bool):
        kind = stage.kind
        overrides = {
            "output_dir": str(self.stages_dir / stage.dirname),
            "learning_rate": self.args.phase_value(kind, "learning_rate"),
            "num_train_epochs": self.args.phase_value(kind, "num_train_epochs"),
            "run_name": f"{self.args.run_name or self.output_dir.name}-{stage.dirname}",
            "max_length": self.data.max_length,
            "restart": False,
            "push_to_hub": False,  # a stage is part of a model; `dmoerm push` uploads the finished DMoERM
            # A resumed stage continues its early-stopping count (kept in the checkpoint's trainer_state.json with
            # the best metric), so it stops at the same epoch as an uninterrupted one.
            "restore_callback_states_from_checkpoint": True,
        }
        if not has_validation:
            overrides.update(eval_strategy="no", load_best_model_at_end=False, metric_for_best_model=None)
        return dataclasses.replace(self.args, **overrides)

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
            train, eval_dataset = (
                train.select_columns(columns),
                (eval_dataset.select_columns(columns) if eval_dataset is not None else None),
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
            calibrate_rewards=self.args.calibrate_rewards,
            min_validation_pairs=self.args.aggregator_min_validation_pairs,
            **common,
        )

    def _run_stage(self, stage: Stage, position: str) -> None:
        from transformers import EarlyStoppingCallback

        train, validation = self.data.stage_data(stage)
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
            "[%s] %s: %d training pairs, %d validation pairs%s",
            position,
            stage.name,
            len(train),
            len(validation),
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
            stage,
            "done",
            metrics=metrics,
            train_seconds=round(seconds, 3),
            resumed_from=resume,
            num_train=len(train),
            num_validation=len(validation),
            global_step=trainer.state.global_step,
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
        model.config.calibrate_rewards = self.args.calibrate_rewards
        model.model_card_metrics = final_metrics(self.state["stages"])
        if self.is_main:
            tmp = self.output_dir / ".export-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            # final_directory: a base inside the run folder (tiny_backbone) is named relative to it (./backbone)
            model.save_pretrained(tmp, save_base=self.model_args.save_base_model, final_directory=self.output_dir)
            self.tokenizer.save_pretrained(tmp)
            for entry in sorted(tmp.iterdir()):
                replace_path(entry, self.output_dir / entry.name)
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
            "categories": self.data.categories,
            "stages": self.state["stages"],
            "ran_this_time": self.ran_stages,
            "splits": {
                c: {k: len(v) for k, v in s.items() if k != "conversations"} for c, s in self.data.splits.items()
            },
            "data": self.report.to_dict(),
            "wall_seconds_this_time": round(seconds, 2),
        }
        if self.is_main:
            atomic_write_json(self.output_dir / SUMMARY_FILE, summary)
        return summary

    def run(self) -> dict[str, Any]:
        """Run every stage that is not finished; export the model; return the summary (also saved as JSON)."""
        start = time.perf_counter()
        check_push_settings(self.model_args, self.args)  # before any training: refused now, not after hours
        if self.args.torch_num_threads:
            import torch

            torch.set_num_threads(self.args.torch_num_threads)
        self._prepare_output_dir()
        self.backbone_path = self._backbone_path()
        self.tokenizer = self._load_tokenizer()
        self._run_labeling()
        self.data.prepare(self.tokenizer, self.backbone_path, self.state)
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
        finished = sorted(
            n for n, i in self.state["stages"].items() if i["status"] == "done" and n not in ("baseline", "label")
        )
        if finished and finished != sorted(self.state.get("exported_after", [])):
            self._export()
        self._finish(finished)
        return self._summary(time.perf_counter() - start)

    def _finish(self, finished: list[str]) -> None:
        """The final evaluation to the trackers (when stages ran this time); push_to_hub: true uploads the model
        once per exported state (a rerun that changed nothing does not push again)."""
        if self.ran_stages:
            log_final_metrics(self.args, self.callbacks, final_metrics(self.state["stages"]), self.is_main)
        if self.args.push_to_hub and finished and self.state.get("pushed_after") != finished:
            if self.is_main:
                commit = push_trained_model(self.output_dir, self.model_args, self.args, self.tokenizer)
                self.state["pushed_after"], self.state["pushed_commit"] = finished, commit
            self._write_state()

    def _run_baseline(self, stage: Stage) -> None:
        from .baseline import train_baseline_reward_model

        train, validation = self.data.stage_data(stage)
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
        self._mark(
            stage,
            "done",
            metrics=metrics,
            train_seconds=round(time.perf_counter() - start, 3),
            num_train=len(train),
            num_validation=len(validation),
        )
        self.ran_stages.append(stage.name)
