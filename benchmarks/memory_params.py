"""Parameters and peak memory: one shared-base DMoERM against per-category base copies (the paper code's layout).

Each layout is built and serves every category once (inference, B=8, T=128) in its own subprocess, so peak RSS is measured
cleanly and side by side in one run:

- ``dmoerm CxK``: this package: one frozen base, C task adapters + C*K expert adapters + router adapter, heads.
- ``dmoerm 1xK``: the same with one category (for the "5 categories cost at most 1.15x of 1" goal).
- ``paper copies CxK``: C full base copies (the paper's code builds one backbone per category and fully fine-tunes
  it in phase 1), each with its K LoRA experts and heads; all of the base copies are trainable in phase 1.

    python benchmarks/memory_params.py                   # SmolLM2-135M-Instruct (offline copy), 5 x 5
    python benchmarks/memory_params.py --backbone PATH --categories 3 --capabilities 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def categories_for(num_categories: int, num_capabilities: int) -> dict[str, list[str]]:
    return {f"category_{c}": [f"capability_{k}" for k in range(num_capabilities)] for c in range(num_categories)}


def measure(layout: str, backbone: str, num_categories: int, num_capabilities: int, batch: int, length: int) -> dict:
    import torch

    from dmoerm_trl import DMoERMForSequenceClassification

    torch.manual_seed(0)
    start = time.perf_counter()
    input_ids = torch.randint(10, 1000, (batch, length))
    if layout == "paper-copies":
        models = [
            DMoERMForSequenceClassification.from_backbone(backbone, categories_for(1, num_capabilities)).eval()
            for _ in range(num_categories)
        ]
        counts = [m.num_parameters_by_part() for m in models]
        total = sum(c["total"] for c in counts)
        # phase 1 of the paper fully fine-tunes each category's base; later phases train the LoRA experts and heads.
        trainable = sum(c["base"] + c["adapters"] + c["heads"] for c in counts)
        with torch.no_grad():  # serve every category once, as a deployed reward model must
            for model in models:
                model(input_ids=input_ids, categories=0)
    else:
        cats = num_categories if layout == "dmoerm" else 1
        model = DMoERMForSequenceClassification.from_backbone(backbone, categories_for(cats, num_capabilities)).eval()
        counts = model.num_parameters_by_part()
        total = counts["total"]
        trainable = counts["adapters"] + counts["heads"]  # the base is never trained
        with torch.no_grad():  # rows spread over every category
            model(input_ids=input_ids, categories=[i % cats for i in range(batch)])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"total": total, "trainable": trainable, "peak_rss_mib": peak_mib, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default: offline SmolLM2-135M-Instruct")
    parser.add_argument("--categories", type=int, default=5)
    parser.add_argument("--capabilities", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.backbone is None:
        from dmoerm_trl.assets import prepare_smollm2

        args.backbone = prepare_smollm2()
    if args._measure:
        result = measure(args._measure, args.backbone, args.categories, args.capabilities, args.batch, args.length)
        print(json.dumps(result))
        return
    c, k = args.categories, args.capabilities
    rows = []
    for layout, label in (
        ("dmoerm", f"dmoerm {c}x{k} (shared base)"),
        ("dmoerm-1", f"dmoerm 1x{k} (shared base)"),
        ("paper-copies", f"paper copies {c}x{k} ({c} bases)"),
    ):
        command = [sys.executable, __file__, "--_measure", layout, "--backbone", args.backbone,
                   "--categories", str(c), "--capabilities", str(k), "--batch", str(args.batch),
                   "--length", str(args.length)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append((label, json.loads(output)))
    ours, one, paper = (r[1] for r in rows)
    print(f"\nbackbone {args.backbone}; {c} categories x {k} capabilities; forward B={args.batch} T={args.length}\n")
    print(f"| layout | total params | trainable params | peak RSS (MiB) |")
    print(f"|---|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['total']:,} | {r['trainable']:,} | {r['peak_rss_mib']:,.0f} |")
    print()
    print(f"paper copies / dmoerm: total params {paper['total'] / ours['total']:.2f}x, "
          f"trainable {paper['trainable'] / ours['trainable']:.2f}x, peak RSS {paper['peak_rss_mib'] / ours['peak_rss_mib']:.2f}x")
    print(f"dmoerm {c} categories / 1 category: peak RSS {ours['peak_rss_mib'] / one['peak_rss_mib']:.3f}x "
          f"(goal <= 1.15x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({label: r for label, r in rows}, handle, indent=2)


if __name__ == "__main__":
    main()
