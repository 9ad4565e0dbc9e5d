"""``dmoerm info PATH``: what a saved DMoERM is made of, without loading any weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("path", help="folder written by save_pretrained (or `dmoerm train`)")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")
    return parser


def _safetensors_numel(path: Path, heads: bool = False) -> int:
    """Parameters stored in a safetensors file; ``heads=True`` (the heads file): without the tensors that are
    statistics, not parameters (the aggregators' calibration, as the file's metadata lists them)."""
    from safetensors import SafetensorError, safe_open

    from ..models.dmoerm._serialization import heads_statistics

    total = 0
    try:
        with safe_open(str(path), framework="pt") as handle:
            statistics = heads_statistics(handle) if heads else set()
            for key in handle.keys():  # noqa: SIM118 - a safe_open handle, not a dict
                if key in statistics:
                    continue
                numel = 1
                for dim in handle.get_slice(key).get_shape():
                    numel *= dim
                total += numel
    except SafetensorError as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}): it is truncated or corrupt; copy or save it again"
        ) from None
    return total


def describe_saved_model(path: str | Path) -> dict:
    """Base, categories, capabilities and parameter counts of a saved DMoERM (reads headers only)."""
    import torch
    from transformers import AutoModel

    from ..models.dmoerm.configuration_dmoerm import DMoERMConfig

    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist (give the folder a DMoERM was saved to)")
    if not (folder / "config.json").exists() or not (folder / "dmoerm_heads.safetensors").exists():
        raise FileNotFoundError(f"{folder} is not a saved DMoERM (config.json + dmoerm_heads.safetensors expected)")
    config = DMoERMConfig.from_pretrained(folder)
    with torch.device("meta"):  # the architecture only, to count the base's parameters without reading weights
        base_params = sum(p.numel() for p in AutoModel.from_config(config.get_backbone_config()).parameters())
    adapters = {
        adapter.name: _safetensors_numel(adapter / "adapter_model.safetensors")
        for adapter in sorted((folder / "adapters").iterdir())
        if (adapter / "adapter_model.safetensors").exists()
    }
    heads = _safetensors_numel(folder / "dmoerm_heads.safetensors", heads=True)
    task_mode = config.task_mode
    if task_mode == "full":  # the paper's layout: the shared base + one full base copy per category
        base_params *= 1 + config.num_categories
    metrics_file = folder / "eval_results.json"
    return {
        "path": str(folder),
        "base_model": config.base_model_name_or_path,
        "base_saved_in_folder": (folder / "base").is_dir(),
        "backbone_type": (config.backbone_config or {}).get("model_type"),
        "hidden_size": config.hidden_size,
        "router_mode": config.router_mode,
        "routing_prompt_ends_at": getattr(config, "assistant_opener_text", None),
        "task_mode": task_mode,
        "trunk_layers": getattr(config, "trunk_layers", 0),
        "lora": {
            "r": config.lora_r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "target_modules": config.lora_target_modules,
        },
        "categories": config.categories,
        "parameters": {
            "base": base_params,
            "adapters": sum(adapters.values()),
            "heads": heads,
            "total": base_params + sum(adapters.values()) + heads,
            "per_adapter": adapters,
        },
        "metrics": json.loads(metrics_file.read_text()) if metrics_file.exists() else {},
    }


def run(args: argparse.Namespace) -> int:
    info = describe_saved_model(args.path)  # a user error (not a model folder, corrupt file): one line, exit 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    params = info["parameters"]
    base_kind = "frozen, shared" if info["task_mode"] == "lora" else "shared + per-category copies"
    print(f"DMoERM at {info['path']}")
    where = "saved in base/" if info["base_saved_in_folder"] else "referenced"
    print(f"  base model:   {info['base_model']} ({info['backbone_type']}, hidden {info['hidden_size']}; {where})")
    from ..models.dmoerm.configuration_dmoerm import ROUTER_DESCRIPTIONS

    print(f"  router:       {info['router_mode']}: {ROUTER_DESCRIPTIONS.get(info['router_mode'], '?')}")
    opener = info["routing_prompt_ends_at"]
    print(
        "  routes on:    "
        + (
            f"the prompt (up to the last {opener!r})"
            if opener
            else "the whole text (no prompt boundary recorded: set_prompt_boundary(tokenizer))"
        )
    )
    if info["task_mode"] == "full":
        print(f"  phase 1:      full fine-tuning, one base copy per category ({len(info['categories'])} + 1 bases)")
    lora = info["lora"]
    print(f"  LoRA:         r={lora['r']} alpha={lora['alpha']} dropout={lora['dropout']} on {lora['target_modules']}")
    if info["trunk_layers"]:
        print(f"  shared trunk: the bottom {info['trunk_layers']} layers (no adapters; run once per sequence)")
    print(f"  categories:   {len(info['categories'])}")
    for category, capabilities in info["categories"].items():
        print(f"    {category}: {', '.join(capabilities)}")
    print(
        f"  parameters:   base {params['base']:,} ({base_kind}) | adapters {params['adapters']:,} "
        f"({len(params['per_adapter'])} adapters) | heads {params['heads']:,} | total {params['total']:,}"
    )
    for key, value in info["metrics"].items():
        print(f"  metric {key}: {value}")
    return 0
