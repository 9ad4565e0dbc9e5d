"""The end of a training run: the final evaluation (to the model card and the ``report_to`` trackers) and the
optional upload (``push_to_hub: true`` in the training config).

Example:
    >>> final_metrics({"aggregator/a": {"status": "done", "num_validation": 30, "metrics": {"eval_accuracy": 0.8}},
    ...                "aggregator/b": {"status": "done", "num_validation": 10, "metrics": {"eval_accuracy": 0.6}}})
    {'aggregator/a/eval_accuracy': 0.8, 'aggregator/b/eval_accuracy': 0.6, 'validation_accuracy': 0.75}
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.errors import TrainingDataError

logger = logging.getLogger(__name__)


def check_push_settings(model_args, training_args) -> None:
    """Refuse, before any training, a ``push_to_hub: true`` run whose pushed model a reader could not load.

    The base must reach the reader: ``save_base_model: true`` uploads it, otherwise ``model_name_or_path`` must be
    a hub id (or a hub cache snapshot).
    """
    if not training_args.push_to_hub or model_args.save_base_model:
        return
    from ..models.dmoerm._base_reference import reference_for_reader, reference_for_save

    if model_args.tiny_backbone:
        where = f"the tiny backbone ({training_args.output_dir}/backbone)"
    elif (
        reference_for_reader(
            reference_for_save(model_args.model_name_or_path, None, Path(training_args.output_dir), warn=False)[0]
        )
        is None
    ):
        where = f"model_name_or_path {model_args.model_name_or_path!r}"
    else:
        return
    raise TrainingDataError(
        f"push_to_hub: true, but {where} is a local folder that a reader of the pushed model cannot download; set "
        "save_base_model: true to upload the base with the model, or train on a hub id"
    )


def final_metrics(stages: dict) -> dict[str, float]:
    """What the run's final evaluation reports: each finished stage's validation accuracy, and
    ``validation_accuracy``: the DMoERM's pairwise accuracy over all categories' validation pairs (the aggregator
    stages' accuracies weighted by their pair counts; the category given, as in training)."""
    metrics: dict[str, float] = {}
    correct = total = 0.0
    for name, info in stages.items():
        accuracy = (info.get("metrics") or {}).get("eval_accuracy")
        if info.get("status") != "done" or accuracy is None:
            continue
        metrics[f"{name}/eval_accuracy"] = accuracy
        if name.startswith("aggregator/") and info.get("num_validation"):
            correct += accuracy * info["num_validation"]
            total += info["num_validation"]
    if total:
        metrics["validation_accuracy"] = correct / total
    return metrics


def log_final_metrics(args, callbacks, metrics: dict[str, float], is_main: bool) -> None:
    """Send the final evaluation (as ``eval_final/<name>``) to the ``report_to`` trackers (opened with
    ``on_train_begin``, closed with ``on_train_end``, as a Trainer does) and to the run's callbacks (``on_log``)."""
    if not metrics:
        return
    from transformers.integrations import get_reporting_integration_callbacks
    from transformers.trainer_callback import TrainerControl, TrainerState

    trackers = [tracker() for tracker in get_reporting_integration_callbacks(args.report_to)]
    state = TrainerState(is_world_process_zero=is_main, is_local_process_zero=is_main)
    control = TrainerControl()
    # "eval_" names: trackers file them under eval/ (transformers' rewrite_logs), e.g. eval/final/validation_accuracy
    logs = {f"eval_final/{name}": value for name, value in metrics.items()}
    for tracker in trackers:  # opens the tracker's run / log folder (TensorBoard: <output_dir>/runs/...)
        tracker.on_train_begin(args, state, control)
    for callback in [*trackers, *callbacks]:
        callback.on_log(args, state, control, logs=logs)
    for tracker in trackers:
        tracker.on_train_end(args, state, control)


def push_trained_model(output_dir: Path, model_args, args, tokenizer) -> str:
    """Upload the exported DMoERM (and the tokenizer, one commit) to ``hub_model_id`` (default: the output folder's
    name), with ``hub_private_repo``, ``hub_token`` and ``hub_revision``; returns the commit URL."""
    from ..models.dmoerm.modeling_dmoerm import DMoERMForSequenceClassification

    model = DMoERMForSequenceClassification.from_pretrained(output_dir)
    repo_id = args.hub_model_id or Path(output_dir).absolute().name
    commit = model.push_to_hub(
        repo_id,
        save_base=model_args.save_base_model,
        private=args.hub_private_repo,
        token=args.hub_token,
        revision=getattr(args, "hub_revision", None),
        tokenizer=tokenizer,
        commit_message=f"Upload DMoERM trained in {Path(output_dir).name}",
    )
    logger.info("pushed the trained DMoERM to %s: %s", repo_id, commit)
    return str(commit)
