"""Model card, and upload of a DMoERM (config, adapters, heads, card) to the Hugging Face Hub.

Example:
    >>> model.push_to_hub("my-org/dmoerm-smollm2", metrics={"pairwise_accuracy": 0.71})  # doctest: +SKIP
    >>> reloaded = AutoModelForSequenceClassification.from_pretrained("my-org/dmoerm-smollm2")  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile

from .models.dmoerm.configuration_dmoerm import ROUTER_DESCRIPTIONS

# Trainer bookkeeping that says nothing about the model: left out of model cards.
_BOOKKEEPING_SUFFIXES = ("runtime", "samples_per_second", "steps_per_second", "epoch", "num_tokens", "global_step")


def card_metrics(metrics: dict | None) -> dict[str, float]:
    """The numbers a model card shows: nested dicts flattened to ``"a/b"`` names, non-numbers and trainer
    bookkeeping (``eval_runtime``, ``epoch``, ...) dropped.

    Example:
        >>> card_metrics({"router": {"eval_accuracy": 0.9, "eval_runtime": 1.2, "epoch": 3.0}, "note": "x"})
        {'router/eval_accuracy': 0.9}
    """
    flat: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}/{name}": number for name, number in card_metrics(value).items()})
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not str(key).endswith(_BOOKKEEPING_SUFFIXES)
        ):
            flat[str(key)] = value
    return flat


def _eval_results(metrics: dict[str, float], dataset_name: str):
    """model-index entries (Papers with Code style) for the accuracy metrics."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="text-classification",
            task_name="Reward modeling (pairwise preference accuracy)",
            dataset_type="custom",
            dataset_name=dataset_name,
            dataset_split="validation",
            metric_type="accuracy",
            metric_name=name,
            metric_value=float(value),
        )
        for name, value in metrics.items()
        if "accuracy" in name
    ]


def build_model_card(model, save_base: bool = False, base_model: str | None = None, repo_id: str | None = None):
    """The README.md of a saved DMoERM, as a ``huggingface_hub.ModelCard``: metadata (``base_model`` when the base is
    a hub id, ``library_name``, ``pipeline_tag: text-classification``, tags, model-index results for accuracy
    metrics), then the base, the categories and capabilities, parameters, metrics and a usage snippet.

    Example:
        >>> card = build_model_card(model, base_model="HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
        >>> card.data.pipeline_tag, card.data.base_model  # doctest: +SKIP
        ('text-classification', 'HuggingFaceTB/SmolLM2-135M-Instruct')
    """
    from huggingface_hub import ModelCard, ModelCardData

    config = model.config
    counts = model.num_parameters_by_part()
    metrics = card_metrics(model.model_card_metrics)
    dataset_name = getattr(model, "model_card_dataset", None) or "held-out preference pairs"
    model_name = repo_id.split("/")[-1] if repo_id else "DMoERM reward model"
    data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["dmoerm", "reward-model", "trl", "peft", "mixture-of-experts"],
        eval_results=_eval_results(metrics, dataset_name) or None,
    )
    if model.full_task_mode:
        phase1 = "full fine-tuning, one base copy per category (`category_bases/`)"
        base_kind = "shared + per-category copies"
    else:
        phase1, base_kind = "a LoRA task adapter per category on the shared base", "frozen, shared"
    if save_base:
        where = "saved in this repository (`base/`)"
    elif base_model:
        where = f"[`{base_model}`](https://huggingface.co/{base_model}), downloaded from the Hub when the model loads"
    else:
        where = (
            f"`{config.base_model_name_or_path}`, a local folder: a reader needs that base (or a copy saved "
            "with `save_base=True`)"
        )
    model_type = config.backbone_config.get("model_type", "?") if config.backbone_config else "?"
    lines = [
        "# DMoERM reward model",
        "",
        (
            "A double-layer mixture-of-experts reward model"
            " ([DMoERM, arXiv 2403.01197](https://arxiv.org/abs/2403.01197)) built with"
            " [dmoerm-trl](https://github.com/dmoerm-trl/dmoerm-trl): a router sends each conversation to its task"
            " category (from the prompt alone); the category's LoRA capability experts score it and an MLP combines"
            " them into one reward."
        ),
        "",
        f"- Base model: {where} ({model_type}, hidden size {config.hidden_size}, pooling `{config.pooling}`)",
        f"- Router: `{config.router_mode}` ({ROUTER_DESCRIPTIONS.get(config.router_mode, '?')}); "
        f"LoRA r={config.lora_r}, alpha={config.lora_alpha}, "
        f"dropout={config.lora_dropout}, targets {config.lora_target_modules}"
        + (f", above a shared trunk of {config.trunk_layers} adapter-free layers" if config.trunk_layers else ""),
        "- Routing input: "
        + (
            f"the prompt, up to the chat template's last `{config.assistant_opener_text!r}`"
            if getattr(config, "assistant_opener_ids", None)
            else "the whole text (no prompt boundary recorded)"
        ),
        f"- Phase 1: {phase1}",
        f"- Parameters: base {counts['base']:,} ({base_kind}), adapters {counts['adapters']:,}, heads "
        + f"{counts['heads']:,}",
        "",
        "## Categories and capabilities",
        "",
        "| category | capability experts |",
        "|---|---|",
    ]
    lines += [f"| {category} | {', '.join(caps)} |" for category, caps in config.categories.items()]
    if metrics:
        lines += ["", "## Evaluation", "", f"On {dataset_name}.", "", "| metric | value |", "|---|---|"]
        for key, value in metrics.items():
            lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    repo = repo_id or "<this repo or folder>"
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import dmoerm_trl  # registers the model with the Auto classes; no trust_remote_code",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        f'model = AutoModelForSequenceClassification.from_pretrained("{repo}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")  # uploaded with `dmoerm push`; else the base\'s',
        'conversation = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]',
        "print(model.compute_rewards([conversation], tokenizer))  # reward, routed category, per-capability rewards",
        "```",
        "",
        "Each adapter in `adapters/` is a standard PEFT LoRA folder (`PeftModel.from_pretrained(base, folder)`).",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def push_to_hub(
    model,
    repo_id: str,
    *,
    save_base: bool = False,
    metrics: dict | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    tokenizer=None,
) -> str:
    """Create the repo if needed and upload what ``save_pretrained`` writes (plus metrics in the model card).

    A reader must be able to get the base: unless ``save_base=True`` uploads it (``base/``), the base must be a hub
    id; a model on a local base is refused with a ``ValueError`` saying so. Returns the commit URL (what
    ``HfApi.create_commit`` returns). ``tokenizer``: uploaded in the same commit when given.

    Example:
        >>> model.push_to_hub("me/dmoerm", metrics={"pairwise_accuracy": 0.71})  # doctest: +SKIP
    """
    from pathlib import Path

    from huggingface_hub import CommitOperationAdd, HfApi

    from .models.dmoerm._base_reference import reference_for_reader, reference_for_save

    base = model.config.base_model_name_or_path
    if not save_base and reference_for_reader(reference_for_save(base, None, Path.cwd(), warn=False)[0]) is None:
        raise ValueError(
            f"the base model {base!r} is a local folder, which a reader of {repo_id} cannot download: upload it too "
            "(save_base=True, `dmoerm push --save-base`), or build the model on a hub id "
            "(from_backbone('org/name') / model_name_or_path: org/name)"
        )
    if metrics:
        model.model_card_metrics = {**model.model_card_metrics, **metrics}
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, save_base=save_base)
        card = build_model_card(
            model,
            save_base=save_base,
            repo_id=repo_id,
            base_model=reference_for_reader(reference_for_save(base, None, folder, warn=False)[0]),
        )
        card.save(Path(folder) / "README.md")
        if tokenizer is not None:  # in the same commit, so the repo is never without it
            tokenizer.save_pretrained(folder)
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
            for path in sorted(Path(folder).rglob("*"))
            if path.is_file()
        ]
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message or "Upload DMoERM reward model",
            revision=revision,
            create_pr=create_pr,
        )
