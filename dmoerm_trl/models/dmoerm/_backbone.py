"""The backbone of a DMoERM: loading pretrained weights (never random ones), LoRA targets, pooling, pad token."""

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

    from ...paths import require_model

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


def backbone_is_causal(backbone) -> bool:
    """Whether a token's hidden state ignores later tokens (a causal decoder), checked on a few tokens.

    The router pools over prompt tokens inside a pass over prompt + response; that is only response-free when the
    backbone is causal. Measured (two short forwards, once when the model is built); where the weights are not
    materialised (meta device, DeepSpeed ZeRO-3 partitions) the model type decides (masked-LM families are
    bidirectional).

    Example:
        >>> from dmoerm_trl.testing_utils import make_tiny_llama, make_tiny_bert
        >>> backbone_is_causal(make_tiny_llama().model), backbone_is_causal(make_tiny_bert())
        (True, False)
    """
    import torch

    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    by_type = base.config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    parameter = next(base.parameters(), None)
    if parameter is None or parameter.device.type == "meta" or parameter.numel() == 0 or hasattr(parameter, "ds_id"):
        return by_type
    vocab = int(getattr(base.config, "vocab_size", 8) or 8)
    input_ids = (torch.arange(8, device=parameter.device) * 3 % max(vocab - 8, 1) + 1).view(1, -1)
    other_suffix = input_ids.clone()
    other_suffix[:, 5:] += 7  # same length (same kernels), other later tokens
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            first = base(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
            second = base(input_ids=other_suffix, attention_mask=torch.ones_like(input_ids)).last_hidden_state
    except Exception:  # noqa: BLE001 - a backbone that cannot run a plain forward here: the model type decides
        return by_type
    finally:
        base.train(was_training)
    first, second = first[:, :5].float(), second[:, :5].float()
    scale = first.abs().max().item() or 1.0
    # A causal backbone gives the same prefix states (0.0 measured on CPU in fp32 and bf16); a bidirectional one
    # differs by ~1e-3 relative even when tiny and random.
    return (first - second).abs().max().item() <= 1e-5 * scale


def resolve_backbone(backbone, backbone_kwargs: dict) -> tuple[PreTrainedModel, str | None, str | None]:
    """``(base model, base_model_name_or_path, pinned revision)`` of ``from_backbone``'s ``backbone`` argument: a hub
    id or path (loaded with ``backbone_kwargs``) or a loaded ``PreTrainedModel`` (a ``*ForCausalLM`` is unwrapped).

    Example:
        >>> from dmoerm_trl.testing_utils import make_tiny_llama
        >>> base, path, revision = resolve_backbone(make_tiny_llama(), {})
        >>> type(base).__name__, path, revision
        ('LlamaModel', None, None)
    """
    from peft import PeftModel

    from ._base_reference import pinned_revision

    if isinstance(backbone, PeftModel):
        raise ValueError(
            "pass the base model, not a PeftModel: DMoERM adds its own LoRA adapters (merge yours first with "
            "merge_and_unload() if the base should include them)"
        )
    if isinstance(backbone, (str, os.PathLike)):
        check_load_kwargs(backbone_kwargs, "from_backbone", BACKBONE_KWARGS + HUB_KWARGS)
        base_path = str(backbone)
        base = load_pretrained_backbone(base_path, **backbone_kwargs)
        base_revision = (
            None
            if os.path.isdir(base_path)
            else pinned_revision(base_path, backbone_kwargs.get("revision"), backbone_kwargs.get("cache_dir"))
        )
    elif isinstance(backbone, PreTrainedModel):
        check_load_kwargs(
            backbone_kwargs,
            "from_backbone with an already loaded backbone (pass options when you "
            "load it, e.g. AutoModel.from_pretrained(..., attn_implementation=...))",
            (),
        )
        base_path, base_revision = backbone.name_or_path or None, None
        inner = getattr(backbone, backbone.base_model_prefix, None)
        base = inner if isinstance(inner, PreTrainedModel) else backbone
    else:
        raise TypeError(
            f"backbone must be a model id/path or a transformers PreTrainedModel, got {type(backbone).__name__}"
        )
    return base, base_path, base_revision


def resolve_pad_token_id(base: PreTrainedModel, tokenizer=None) -> int | None:
    """The pad token id a DMoERM records in its config: the tokenizer's when one is given (it must have a pad token),
    else the base config's (``None`` when it has none).

    Example:
        >>> from types import SimpleNamespace
        >>> resolve_pad_token_id(SimpleNamespace(config=SimpleNamespace(pad_token_id=0)))
        0
    """
    if tokenizer is None:
        return getattr(base.config, "pad_token_id", None)
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"the tokenizer ({type(tokenizer).__name__}) has no pad token; set one before building the reward model, "
            "e.g. tokenizer.pad_token = tokenizer.eos_token (decoders) or add a '[PAD]' token"
        )
    return tokenizer.pad_token_id
