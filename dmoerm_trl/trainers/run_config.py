"""``run_config.json``: the settings that trained the run in an output folder, and the check of a rerun against them.

Rerunning ``dmoerm train`` into a folder resumes it: finished stages are skipped and an interrupted stage continues
from its checkpoint. That is only right with the same settings; a rerun with another ``lora_r``, learning rate or
backbone would mix stages trained two ways (and ``run_config.json`` would no longer describe the model). So a rerun
into a folder that holds trained results (a finished stage or a stage checkpoint) compares its settings with the
stored ones and stops with the list of changed keys, unless the only changes are to keys that cannot change the
result (:data:`RESULT_NEUTRAL_KEYS`: logging, ``report_to``, threads, which stages to run now, hub upload ...).
``--restart true`` deletes the results and trains from scratch with the new settings.

Example:
    >>> from dmoerm_trl.trainers.run_config import changed_settings
    >>> stored = {"model_args": {"lora_r": 8}, "training_args": {"logging_steps": 5, "seed": 0}}
    >>> new = {"model_args": {"lora_r": 4}, "training_args": {"logging_steps": 50, "seed": 0}}
    >>> changed_settings(stored, new)
    [('lora_r', 8, 4)]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..data.errors import TrainingDataError

RUN_CONFIG_FILE = "run_config.json"
SECTIONS = ("model_args", "data_args", "training_args")

# Keys whose value cannot change the trained tensors: where and how often the run logs, reports and uploads, how
# many CPU threads or loader workers it uses, which stages or categories it runs *this time* (finished ones are
# kept either way), how many old checkpoints it keeps (the best one is always kept).
RESULT_NEUTRAL_KEYS = frozenset(
    {
        # logging and reporting
        "logging_dir",
        "logging_strategy",
        "logging_steps",
        "logging_first_step",
        "logging_nan_inf_filter",
        "log_on_each_node",
        "log_level",
        "log_level_replica",
        "disable_tqdm",
        "report_to",
        "run_name",
        "project",
        "trackio_space_id",
        "trackio_bucket_id",
        "trackio_static_space_id",
        "include_num_input_tokens_seen",
        "include_tokens_per_second",
        "skip_memory_metrics",
        # hub upload (of the finished model; stages never push)
        "push_to_hub",
        "hub_token",
        "hub_private_repo",
        "hub_model_id",
        "hub_strategy",
        "hub_always_push",
        "hub_revision",
        # threads, workers, processes' bookkeeping
        "torch_num_threads",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
        "dataset_num_proc",
        "ddp_timeout",
        "local_rank",
        "torch_empty_cache_steps",
        # what runs now and how the folder is kept
        "output_dir",
        "overwrite_output_dir",
        "stages",
        "categories_to_train",
        "train_baseline",
        "skip_empty_categories",
        "restart",
        "resume_from_checkpoint",
        "do_train",
        "do_eval",
        "do_predict",
        "save_total_limit",
        "save_on_each_node",
        "enable_jit_checkpoint",
        "restore_callback_states_from_checkpoint",
    }
)
RESTART_FLAG = "--restart true"


def build_run_config(model_args, data_args, training_args) -> dict[str, Any]:
    """The JSON-able settings of a run: the three argument dataclasses, by section.

    Example:
        >>> from dmoerm_trl.trainers import DMoERMModelArguments, DMoERMDataArguments, DMoERMTrainingConfig
        >>> config = build_run_config(DMoERMModelArguments(tiny_backbone="llama"), DMoERMDataArguments(),
        ...                           DMoERMTrainingConfig(output_dir="runs/x", use_cpu=True))
        >>> config["model_args"]["lora_r"], sorted(config)
        (32, ['data_args', 'model_args', 'training_args'])
    """
    return json.loads(
        json.dumps(
            {
                "model_args": dataclasses.asdict(model_args),
                "data_args": dataclasses.asdict(data_args),
                "training_args": training_args.to_json_dict(),
            },
            default=str,
        )
    )


def changed_settings(stored: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, stored value, new value)`` for every result-changing key whose value differs.

    Keys present on one side only (an argument added or removed by another version of TRL/transformers/this
    package) are not compared.

    Example:
        >>> changed_settings({"training_args": {"seed": 0, "report_to": []}},
        ...                  {"training_args": {"seed": 1, "report_to": ["tensorboard"]}})
        [('seed', 0, 1)]
    """
    changes = []
    for section in SECTIONS:
        old_values, new_values = stored.get(section) or {}, new.get(section) or {}
        for key in old_values:
            if key in RESULT_NEUTRAL_KEYS or key not in new_values:
                continue
            if old_values[key] != new_values[key]:
                changes.append((key, old_values[key], new_values[key]))
    return changes


def trained_results(output_dir: str | Path, state: dict[str, Any]) -> list[str]:
    """What in ``output_dir`` was trained with the stored settings: finished stages and stage checkpoints."""
    output_dir = Path(output_dir)
    finished = [name for name, info in state.get("stages", {}).items() if info.get("status") == "done"]
    checkpoints = sorted(
        str(path.relative_to(output_dir)) for path in (output_dir / "stages").glob("*/checkpoint-*") if path.is_dir()
    )
    return finished + checkpoints


def check_rerun(output_dir: str | Path, new: dict[str, Any], state: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Refuse a rerun whose settings would change results already in ``output_dir``; return the changed keys.

    Raises :class:`TrainingDataError` (a ``ValueError``) when ``output_dir`` holds trained results (finished stages,
    stage checkpoints) and a result-changing key differs from ``run_config.json``. The message is one line: the
    folder, each changed key as ``key: stored -> new``, and the fixes (the stored settings to resume, ``--restart
    true`` or a new ``output_dir`` for a fresh run). Without trained results the changes are returned (the caller
    deletes stale leftovers such as a tiny backbone of another size).

    Example:
        >>> import tempfile
        >>> check_rerun(tempfile.mkdtemp(), {"model_args": {"lora_r": 4}}, {"stages": {}})  # a new folder
        []
    """
    path = Path(output_dir) / RUN_CONFIG_FILE
    if not path.exists():
        return []
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        if not trained_results(output_dir, state):
            return [(RUN_CONFIG_FILE, "unreadable", "rewritten")]
        raise TrainingDataError(
            f"{path} is unreadable ({err}); it records the settings of the results in {output_dir}. Fix: pass "
            f"{RESTART_FLAG} to delete them and train from scratch, or use a new output_dir"
        ) from err
    changes = changed_settings(stored, new)
    results = trained_results(output_dir, state)
    if not changes or not results:
        return changes
    diff = "; ".join(f"{key}: {json.dumps(old)} -> {json.dumps(value)}" for key, old, value in changes)
    raise TrainingDataError(
        f"the settings changed since {output_dir} was trained ({len(results)} finished stage(s)/checkpoint(s), e.g. "
        f"{results[0]}): {diff}. Resuming would mix stages trained with both. Fix: rerun with the stored settings "
        f"({path}) to resume, pass {RESTART_FLAG} to delete the results and train from scratch with the new ones, "
        "or use a new output_dir"
    )


# What a run writes into its output folder besides the labels (labels/ keeps the judge's cache: relabeling is free).
RESULT_FILES = (
    "pipeline_state.json",
    "splits.json",
    "training_summary.json",
    RUN_CONFIG_FILE,
    "config.json",
    "dmoerm_heads.safetensors",
    "README.md",
    "eval_results.json",
)
RESULT_FOLDERS = ("stages", "adapters", "category_bases", "base", "baseline", "backbone")


def delete_results(output_dir: str | Path) -> None:
    """Delete the trained results of a run in ``output_dir`` (stages, checkpoints, the exported model, the baseline,
    the tiny backbone); the labels and any other file stay.

    Example:
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp(); os.mkdir(os.path.join(folder, "stages"))
        >>> delete_results(folder); os.listdir(folder)
        []
    """
    import shutil

    output_dir = Path(output_dir)
    for name in RESULT_FILES:
        (output_dir / name).unlink(missing_ok=True)
    for name in RESULT_FOLDERS:
        shutil.rmtree(output_dir / name, ignore_errors=True)
