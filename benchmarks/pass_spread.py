"""Spread of single backbone passes: is a DMoERM expert pass slower than a single RM's pass, or is it noise?

Times, interleaved over ``--rounds`` rounds (one pass each, after a warm-up), on SmolLM2-135M-Instruct with 5 x 5
adapters: the single RM, the PEFT-wrapped base with one expert chosen by per-row ``adapter_names``, the same expert
made active instead, and DMoERM's own expert pass (``_encode``). Prints min / median / max seconds per pass. Used to
check the T=128 scoring result in ``docs/benchmarks.md`` (a bound built from the best single pass is biased low when
passes vary widely).

    python benchmarks/pass_spread.py --length 128 --batch 64 --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default: offline SmolLM2-135M-Instruct")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    from peft.tuners.tuners_utils import BaseTunerLayer
    from scoring_speed import build_models  # benchmarks/ is on sys.path when this script runs

    _, _, model, single = build_models(args.backbone, 5, 5)
    ids = torch.randint(10, 1000, (args.batch, args.length))
    mask = torch.ones_like(ids)
    pos = mask.cumsum(-1) - 1
    name = model.expert_adapter_names("category_0")[0]
    backbone = model.backbone
    names = [name] * args.batch

    def make_active():  # the active adapter without touching requires_grad (a probe only: not restored)
        for module in backbone.modules():
            if isinstance(module, BaseTunerLayer):
                module._active_adapter = name

    variants = {
        "single RM": lambda: single(input_ids=ids, attention_mask=mask),
        "expert via per-row adapter_names": lambda: backbone(
            input_ids=ids, attention_mask=mask, position_ids=pos, adapter_names=names, use_cache=False
        ),
        "expert made active": lambda: (
            make_active(),
            backbone(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False),
        ),
        "DMoERM _encode (expert pass)": lambda: model._encode(ids, mask, pos, adapter_names=names),
    }
    times = {key: [] for key in variants}
    with torch.no_grad():
        for fn in variants.values():
            fn()
        for _ in range(args.rounds):
            for key, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    print(f"B={args.batch} T={args.length}, {args.rounds} interleaved rounds")
    print("| pass | min s | median s | max s |")
    print("|---|---:|---:|---:|")
    for key, values in times.items():
        print(f"| {key} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
