"""Files of a saved DMoERM (safetensors only).

```
my-dmoerm/
  config.json                      DMoERMConfig (model_type "dmoerm")
  dmoerm_heads.safetensors         router head, task heads, value heads, aggregators
  adapters/<name>/                 one standard PEFT LoRA folder per adapter (adapter_config.json +
                                   adapter_model.safetensors): router, <category>__task, <category>__<capability>
  base/                            only with save_base=True: the backbone (config.json + model.safetensors)
  category_bases/<category>/       only with task_mode="full": that category's fine-tuned base copy (model.safetensors)
  eval_results.json                evaluation metrics, when known (shown in the model card)
  README.md                        model card
```
Every file is written to a temporary name and renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {"format": "pt"}))


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    _atomic_write_bytes(path, write)


def _plain_key(peft_key: str) -> str:
    """The plain backbone's name of a PEFT-wrapped backbone's (non-LoRA) weight."""
    return peft_key.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _base_state_dict(backbone_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain backbone's state dict out of a PEFT-wrapped one (LoRA weights dropped, base_layer unwrapped)."""
    return {_plain_key(key): value for key, value in backbone_state.items() if ".lora_" not in key}


BACKBONE_PREFIXES = ("backbone.", "category_backbones.")
CATEGORY_BASES = "category_bases"


def _sub_state(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def save_dmoerm(model, save_directory, state_dict=None, save_base: bool = False) -> None:
    from peft import get_peft_model_state_dict

    from .hub import build_model_card

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    if not save_base and not config.base_model_name_or_path:
        raise ValueError(
            "the backbone was not loaded from a hub id or path, so a saved model could not find it again; "
            "save with save_pretrained(path, save_base=True)"
        )
    state_dict = state_dict if state_dict is not None else model.state_dict()
    heads = {k: v for k, v in state_dict.items() if not k.startswith(BACKBONE_PREFIXES)}
    backbone_state = _sub_state(state_dict, "backbone.")
    atomic_save_safetensors(heads, folder / "dmoerm_heads.safetensors")

    for name in model.all_adapter_names():
        prefix, owner = model.adapter_owner(name)
        adapter_state = get_peft_model_state_dict(owner, state_dict=_sub_state(state_dict, prefix), adapter_name=name)
        adapter_dir = folder / "adapters" / name
        atomic_save_safetensors(adapter_state, adapter_dir / ADAPTER_WEIGHTS)
        peft_config = owner.peft_config[name]
        peft_config.base_model_name_or_path = config.base_model_name_or_path
        atomic_write_text(adapter_dir / "adapter_config.json", json.dumps(peft_config.to_dict(), indent=2, default=list))

    if model.full_task_mode:
        for slug in model.category_backbones:
            category_state = _base_state_dict(_sub_state(state_dict, f"category_backbones.{slug}."))
            atomic_save_safetensors(category_state, folder / CATEGORY_BASES / slug / "model.safetensors")
    if save_base:
        base_dir = folder / "base"
        atomic_save_safetensors(_base_state_dict(backbone_state), base_dir / "model.safetensors")
        atomic_write_text(base_dir / "config.json", config.get_backbone_config().to_json_string())
    if model.model_card_metrics:
        atomic_write_text(folder / "eval_results.json", json.dumps(model.model_card_metrics, indent=2))
    atomic_write_text(folder / "config.json", config.to_json_string())
    atomic_write_text(folder / "README.md", build_model_card(model, save_base=save_base))


def _resolve_folder(name_or_path, hub_kwargs: dict) -> Path:
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path), **hub_kwargs))


_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
_BASE_KWARGS = ("dtype", "torch_dtype", "device_map", "attn_implementation", "low_cpu_mem_usage")


def load_dmoerm(cls, name_or_path, config, base_model_name_or_path, kwargs: dict):
    from .backbone import load_pretrained_backbone
    from .configuration_dmoerm import DMoERMConfig

    num_labels = kwargs.pop("num_labels", 1)
    if num_labels != 1:
        raise ValueError(f"a DMoERM is a reward model with one output; got num_labels={num_labels}")
    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    base_kwargs = {k: kwargs[k] for k in _BASE_KWARGS if k in kwargs}
    base_kwargs.update({k: v for k, v in hub_kwargs.items() if k in ("revision", "token", "cache_dir", "local_files_only")})
    folder = _resolve_folder(name_or_path, hub_kwargs)
    if not (folder / "dmoerm_heads.safetensors").exists():
        raise FileNotFoundError(
            f"{folder} is not a saved DMoERM (no dmoerm_heads.safetensors); save one with model.save_pretrained()"
        )
    if not isinstance(config, DMoERMConfig):
        config = DMoERMConfig.from_pretrained(folder)
    if (folder / "base").is_dir():
        base_source = folder / "base"
        base_kwargs = {k: v for k, v in base_kwargs.items() if k not in ("revision", "token", "cache_dir")}
    else:
        base_source = base_model_name_or_path or config.base_model_name_or_path
        if base_source is None:
            raise ValueError(f"{folder} has no base/ folder and its config names no base model; pass base_model_name_or_path=")
    base = load_pretrained_backbone(base_source, **base_kwargs)
    model = cls(config, backbone=base)
    parameter = next(base.parameters())
    model.to(device=parameter.device, dtype=parameter.dtype)
    load_dmoerm_weights(model, folder)
    if (folder / "eval_results.json").exists():
        model.model_card_metrics = json.loads((folder / "eval_results.json").read_text(encoding="utf-8"))
    model.eval()
    return model


def read_safetensors(path) -> dict:
    """``load_file(path)``, with a ``ValueError`` naming the file when it is truncated or corrupt."""
    from safetensors import SafetensorError

    try:
        return load_file(path)
    except SafetensorError as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}): it is truncated or corrupt; copy or save it again"
        ) from None


def load_dmoerm_weights(model, folder) -> None:
    from peft import set_peft_model_state_dict

    folder = Path(folder)
    heads = read_safetensors(folder / "dmoerm_heads.safetensors")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(BACKBONE_PREFIXES)}
    missing = sorted(set(own) - set(heads))
    unexpected = sorted(set(heads) - set(own))
    reshaped = sorted(k for k in set(own) & set(heads) if own[k].shape != heads[k].shape)
    if missing or unexpected or reshaped:
        raise ValueError(
            f"{folder}/dmoerm_heads.safetensors does not match this model's categories and capabilities "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]}, other shape {reshaped[:4]}); "
            "was it saved from another config?"
        )
    model.load_state_dict(heads, strict=False)
    for name in model.all_adapter_names():
        path = folder / "adapters" / name / ADAPTER_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"adapter {name!r} is missing: {path} does not exist")
        adapter_state = read_safetensors(path)
        outcome = set_peft_model_state_dict(model.adapter_owner(name)[1], adapter_state, adapter_name=name)
        if outcome.unexpected_keys:
            raise ValueError(f"{path}: unexpected keys {outcome.unexpected_keys[:5]}; saved from another backbone?")
    if model.full_task_mode:
        for slug, backbone in model.category_backbones.items():
            load_category_base(backbone, folder / CATEGORY_BASES / slug / "model.safetensors")


def load_category_base(peft_backbone, path: Path) -> None:
    """Load a saved category base copy (plain backbone keys) into its PEFT-wrapped copy; every weight must be there."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: a task_mode='full' DMoERM stores each category's fine-tuned base copy there "
            "(was the folder saved by an older version, or copied without category_bases/?)"
        )
    saved = read_safetensors(path)
    plain_to_own = {_plain_key(key): key for key in peft_backbone.state_dict() if ".lora_" not in key}
    missing = sorted(set(plain_to_own) - set(saved))
    unexpected = sorted(set(saved) - set(plain_to_own))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match this model's backbone (missing {missing[:4]}, unexpected {unexpected[:4]}); "
            "was it saved from another base model?"
        )
    peft_backbone.load_state_dict({plain_to_own[k]: v for k, v in saved.items()}, strict=False)
