"""Model card, and upload of a DMoERM (config, adapters, heads, card) to the Hugging Face Hub.

Example:
    >>> model.push_to_hub("my-org/dmoerm-smollm2", metrics={"pairwise_accuracy": 0.71})  # doctest: +SKIP
    >>> reloaded = AutoModelForSequenceClassification.from_pretrained("my-org/dmoerm-smollm2")  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile

from .configuration_dmoerm import ROUTER_DESCRIPTIONS


def build_model_card(model, save_base: bool = False) -> str:
    """A README.md for a saved DMoERM: base model, categories and capabilities, parameters, metrics when known."""
    config = model.config
    counts = model.num_parameters_by_part()
    if model.full_task_mode:
        phase1 = "full fine-tuning, one base copy per category (`category_bases/`)"
        base_kind = "shared + per-category copies"
    else:
        phase1, base_kind = "a LoRA task adapter per category on the shared base", "frozen, shared"
    base = config.base_model_name_or_path or "(saved in base/)"
    front_matter = ["---", "library_name: transformers", "tags:", "- dmoerm", "- reward-model", "- trl", "- peft"]
    if config.base_model_name_or_path and not save_base and "/" in config.base_model_name_or_path and not (
        config.base_model_name_or_path.startswith(("/", "."))
    ):
        front_matter.append(f"base_model: {config.base_model_name_or_path}")
    front_matter.append("---")
    lines = [
        *front_matter,
        "",
        "# DMoERM reward model",
        "",
        "A double-layer mixture-of-experts reward model ([DMoERM, arXiv 2403.01197](https://arxiv.org/abs/2403.01197))"
        " built with [dmoerm-trl](https://github.com/dmoerm-trl/dmoerm-trl): a router sends each conversation to its"
        " task category; the category's LoRA capability experts score it and an MLP combines them into one reward.",
        "",
        f"- Base model: `{base}` ({config.backbone_config.get('model_type', '?') if config.backbone_config else '?'}, "
        f"hidden size {config.hidden_size}, pooling `{config.pooling}`)",
        f"- Router: `{config.router_mode}` ({ROUTER_DESCRIPTIONS.get(config.router_mode, '?')}); "
        f"LoRA r={config.lora_r}, alpha={config.lora_alpha}, "
        f"dropout={config.lora_dropout}, targets {config.lora_target_modules}"
        + (f", above a shared trunk of {config.trunk_layers} adapter-free layers" if config.trunk_layers else ""),
        f"- Phase 1: {phase1}",
        f"- Parameters: base {counts['base']:,} ({base_kind}), adapters {counts['adapters']:,}, "
        f"heads {counts['heads']:,}",
        "",
        "## Categories and capabilities",
        "",
        "| category | capability experts |",
        "|---|---|",
    ]
    lines += [f"| {category} | {', '.join(caps)} |" for category, caps in config.categories.items()]
    if model.model_card_metrics:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        for key, value in model.model_card_metrics.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import dmoerm_trl  # registers the model with the Auto classes; no trust_remote_code",
        "from transformers import AutoModelForSequenceClassification",
        "",
        'model = AutoModelForSequenceClassification.from_pretrained("<this repo>")',
        "out = model(**tokenizer(texts, return_tensors='pt', padding=True))",
        "out.logits            # (B, 1) rewards",
        "out.category_ids      # routed category per row",
        "out.capability_rewards  # per-capability expert rewards",
        "```",
        "",
        "Each adapter in `adapters/` is a standard PEFT LoRA folder (`PeftModel.from_pretrained(base, folder)`).",
        "",
    ]
    return "\n".join(lines)


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
) -> str:
    """Create the repo if needed and upload what ``save_pretrained`` writes (plus metrics in the model card).

    Returns the commit URL (what ``HfApi.create_commit`` returns).
    """
    from pathlib import Path

    from huggingface_hub import CommitOperationAdd, HfApi

    if metrics:
        model.model_card_metrics = {**model.model_card_metrics, **metrics}
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, save_base=save_base)
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
