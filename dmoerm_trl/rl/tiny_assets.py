"""Tiny, offline RL assets for tests, the recipes' CPU smoke runs and the docs: a policy, a gold reward model, proxy
reward models correlated with the gold one, a DMoERM and a prompt file. Built in seconds from random tiny Llamas.

The proxies are the gold reward model with Gaussian noise added to every weight (``noise_scale`` times each
tensor's standard deviation, a different seed per proxy): they agree with the gold model only partly, so optimizing
them shows overoptimization, and averaging several (an ensemble) tracks the gold reward better than one. Nothing is
trained: this is a harness check, not a result about real reward models.

Example:
    $ python -m dmoerm_trl.rl.tiny_assets tiny-rl-assets
    >>> from dmoerm_trl.rl.tiny_assets import make_tiny_rl_assets
    >>> paths = make_tiny_rl_assets("tiny-rl-assets")                         # doctest: +SKIP
    >>> paths["policy"], paths["gold"], paths["proxies"], paths["dmoerm"], paths["prompts"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..utils.io import atomic_write_text

TINY_RL_CATEGORIES = {"objective_qa": ["correctness", "logic"], "chitchat": ["empathy", "fluency"]}

_TOPICS = [
    "the capital of France",
    "why the sky is blue",
    "how to bake bread",
    "a poem about the sea",
    "12 times 7",
    "renting or buying a house",
    "a pirate captain's greeting",
    "how you are today",
    "the boiling point of water",
    "a story about a fox",
    "learning to play chess",
    "the moon landing",
    "a haiku about autumn",
    "how rainbows form",
    "saving money each month",
    "a good book to read",
]
_FORMS = ["Tell me about {}.", "What do you know about {}?", "Explain {} briefly."]


def tiny_prompts(num_prompts: int = 48) -> list[list[dict]]:
    """Conversational prompts (one user turn each), deterministic."""
    prompts = []
    for i in range(num_prompts):
        topic, form = _TOPICS[i % len(_TOPICS)], _FORMS[(i // len(_TOPICS)) % len(_FORMS)]
        prompts.append([{"role": "user", "content": form.format(topic)}])
    return prompts


def _noisy_copy(model, noise_scale: float, seed: int):
    import copy

    import torch

    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in noisy.parameters():
            scale = float(parameter.std()) if parameter.numel() > 1 else 1.0
            parameter.add_(torch.randn(parameter.shape, generator=generator) * noise_scale * scale)
    return noisy


def make_tiny_rl_assets(
    output_dir: str | os.PathLike,
    num_proxies: int = 3,
    noise_scale: float = 0.5,
    num_prompts: int = 48,
    with_dmoerm: bool = True,
    seed: int = 0,
) -> dict:
    """Build the assets under ``output_dir``; returns their paths (``policy``, ``gold``, ``proxies`` list,
    ``dmoerm``, ``prompts``). Existing assets are rebuilt."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ..testing_utils import make_tiny_llama, make_tiny_tokenizer

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    policy_path = make_tiny_llama(root / "policy", hidden_size=32, num_layers=2, seed=seed, tokenizer=tokenizer)

    # The gold RM: a bigger random Llama backbone with a 1-output head.
    gold_backbone = make_tiny_llama(
        root / "gold_backbone", hidden_size=64, num_layers=2, seed=seed + 100, tokenizer=tokenizer
    )
    torch.manual_seed(seed + 101)
    gold = AutoModelForSequenceClassification.from_pretrained(gold_backbone, num_labels=1)
    with torch.no_grad():
        gold.score.weight.normal_(0, 1.0 / gold.config.hidden_size**0.5)
    gold.save_pretrained(root / "gold")
    tokenizer.save_pretrained(root / "gold")

    proxies = []
    for i in range(num_proxies):
        proxy = _noisy_copy(gold, noise_scale, seed=seed + 200 + i)
        path = root / f"proxy_{i}"
        proxy.save_pretrained(path)
        tokenizer.save_pretrained(path)
        proxies.append(str(path))

    paths = {"policy": str(policy_path), "gold": str(root / "gold"), "proxies": proxies}
    if with_dmoerm:
        from ..models.dmoerm.modeling_dmoerm import DMoERMForSequenceClassification
        from ..testing_utils import randomize_adapters

        dmoerm = DMoERMForSequenceClassification.from_backbone(
            str(gold_backbone), TINY_RL_CATEGORIES, tokenizer=tokenizer, lora_r=4, lora_alpha=8
        )
        randomize_adapters(dmoerm, std=0.2, seed=seed)
        dmoerm.eval()
        dmoerm.save_pretrained(root / "dmoerm")
        tokenizer.save_pretrained(root / "dmoerm")
        paths["dmoerm"] = str(root / "dmoerm")

    prompts_file = root / "prompts.jsonl"
    atomic_write_text(prompts_file, "".join(json.dumps({"prompt": p}) + "\n" for p in tiny_prompts(num_prompts)))
    paths["prompts"] = str(prompts_file)
    atomic_write_text(root / "assets.json", json.dumps(paths, indent=2))
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m dmoerm_trl.rl.tiny_assets [OUTPUT_DIR] [--num-proxies N] [--num-prompts N] [--seed N]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dmoerm_trl.rl.tiny_assets",
        description="Build tiny offline RL assets (random tiny Llamas: a policy, a gold reward model, noisy proxies "
        "of it, a DMoERM, and a prompt file) and print their paths as JSON.",
    )
    parser.add_argument("output_dir", nargs="?", default="tiny-rl-assets", help="folder to write (rebuilt if present)")
    parser.add_argument("--num-proxies", type=int, default=3, help="noisy copies of the gold reward model")
    parser.add_argument("--num-prompts", type=int, default=48, help="chat prompts in prompts.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = make_tiny_rl_assets(
        args.output_dir, num_proxies=args.num_proxies, num_prompts=args.num_prompts, seed=args.seed
    )
    print(json.dumps(paths, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
