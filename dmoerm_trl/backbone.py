"""The backbone of a DMoERM: loading pretrained weights (never random ones), LoRA targets, pooling."""

from __future__ import annotations

import os

from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

# Known attention projections that get LoRA, by model family, tried in this order.
_LORA_TARGET_CANDIDATES = (["q_proj", "v_proj"], ["query", "value"], ["c_attn"], ["query_key_value"], ["Wqkv"])



def detect_lora_target_modules(backbone: nn.Module, requested: list[str] | None = None) -> list[str]:
    """The backbone's attention projections to put LoRA on (or check ``requested`` against the backbone).

    Example:
        >>> detect_lora_target_modules(llama_model)  # doctest: +SKIP
        ['q_proj', 'v_proj']
    """
    linear_names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in backbone.named_modules()
            if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        }
    )
    if requested:
        missing = [name for name in requested if name not in linear_names]
        if missing:
            raise ValueError(
                f"lora_target_modules {missing} are not linear layers of {type(backbone).__name__}; "
                f"choose from {linear_names}"
            )
        return list(requested)
    for candidate in _LORA_TARGET_CANDIDATES:
        if all(name in linear_names for name in candidate):
            return list(candidate)
    raise ValueError(
        f"{type(backbone).__name__} has none of the usual LoRA target modules ({_LORA_TARGET_CANDIDATES}); "
        f"pass lora_target_modules=[...] chosen from its linear layers: {linear_names}"
    )


# Keyword arguments that reach the backbone's ``AutoModel.from_pretrained`` and are honoured there.
BACKBONE_KWARGS = ("dtype", "torch_dtype", "device_map", "attn_implementation", "low_cpu_mem_usage")
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies", "subfolder")
_QUANTIZATION_KWARGS = ("quantization_config", "load_in_8bit", "load_in_4bit")


def check_load_kwargs(kwargs: dict, where: str, allowed: tuple[str, ...]) -> None:
    """Refuse, with one clear message, keyword arguments a DMoERM loader cannot honour (instead of ignoring them).

    ``None``/``False`` values of refused arguments are accepted (they ask for nothing); names starting with ``_``
    are transformers' internal plumbing (``_from_auto``, ``_from_pipeline``) and are ignored.

    Example:
        >>> check_load_kwargs({"dtype": "auto"}, "from_backbone", BACKBONE_KWARGS + HUB_KWARGS)
        >>> check_load_kwargs({"quantisation": 4}, "from_backbone", ("dtype",))
        Traceback (most recent call last):
        ...
        ValueError: from_backbone got keyword arguments it cannot honour: ['quantisation']; it accepts dtype
    """
    asked = {k: v for k, v in kwargs.items() if not k.startswith("_") and v is not None and v is not False}
    quantized = [k for k in _QUANTIZATION_KWARGS if k in asked]
    if quantized:
        raise ValueError(
            f"{where}: {quantized[0]}= is not supported: a DMoERM trains and runs LoRA adapters on a plain backbone "
            "(quantized bases are not wired in); load it in bf16 instead (dtype=torch.bfloat16) to halve the memory"
        )
    if asked.get("trust_remote_code") and "trust_remote_code" not in allowed:
        raise ValueError(
            f"{where}: trust_remote_code=True is refused: dmoerm-trl never runs code downloaded with a model; "
            "DMoERM itself needs none (import dmoerm_trl registers it)"
        )
    unknown = sorted(k for k in asked if k not in allowed and k != "trust_remote_code")
    if unknown:
        raise ValueError(
            f"{where} got keyword arguments it cannot honour: {unknown}; it accepts {', '.join(allowed) or 'none'}"
        )


def load_pretrained_backbone(name_or_path, **kwargs) -> PreTrainedModel:
    """``AutoModel.from_pretrained`` that refuses to hand back randomly initialised backbone weights.

    The paper's code built its backbones with ``LlamaModel(config)`` (random weights). Here a checkpoint that lacks
    some of the backbone's weights is an error. The head of a ``*ForCausalLM`` checkpoint (``lm_head``) is expected
    to be unused and is not reported.
    """
    from transformers.utils import logging as hf_logging

    from .paths import require_model

    if isinstance(name_or_path, (str, os.PathLike)):
        require_model(str(name_or_path), "backbone")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report would list lm_head as "unexpected" for every causal LM
    try:
        base, info = AutoModel.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [key for key in info.get("missing_keys", []) if key]
    if missing:
        raise ValueError(
            f"{name_or_path} does not contain all of the backbone's weights (missing {sorted(missing)[:5]}"
            f"{' ...' if len(missing) > 5 else ''}); they would be random. Check the path, or pass a loaded model."
        )
    return base


def detect_pooling(backbone_config) -> str:
    # Encoders (BERT family: masked-LM models) summarise a sequence in the first ([CLS]) token; decoders in the last.
    return "first" if backbone_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "last"


