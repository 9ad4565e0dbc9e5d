"""Time to put a DMoERM's LoRA adapters on a backbone: PEFT's ``add_adapter`` loop vs ``wrap_with_adapters``.

A DMoERM with C categories x K capabilities carries 1 + C + C*K LoRA adapters (router, task adapters, experts) on
one frozen base; every ``from_backbone`` and ``from_pretrained`` builds them. Both methods run side by side in one
process, alternating, on a freshly loaded backbone each time (loading is not timed; its time is shown once for
scale), with the same seed; the table gives the median wall-clock and CPU seconds of the adapter step and checks
that both methods gave the same parameters (names, shapes, dtypes, ``requires_grad`` and values).

    nice -n 10 python benchmarks/adapter_build.py                      # SmolLM2-135M (offline copy): 2x2, 5x5, 8x8
    nice -n 10 python benchmarks/adapter_build.py --layouts 5x5 --top-layers 8     # LoRA only in the top 8 layers
    nice -n 10 python benchmarks/adapter_build.py --shape smollm2-1.7b --dtype bfloat16 --layouts 5x5 --repeats 1

Flags:

- ``--backbone PATH``: a pretrained backbone folder (default: the offline SmolLM2-135M-Instruct copy).
- ``--shape {smollm2-360m,smollm2-1.7b}``: instead, the random-weight backbone of that shape that
  ``benchmarks/memory_params.py --shape ...`` saves under ``$DMOERM_CACHE/random-<shape>`` (run that once first).
- ``--layouts``: comma-separated ``CxK`` (categories x capabilities), default ``2x2,5x5,8x8`` (7, 31, 73 adapters).
- ``--lora-r`` (32), ``--target-modules`` (``q_proj,v_proj``): the paper's adapters; ``--top-layers N``: LoRA only
  in the top N decoder layers (``layers_to_transform`` + ``layers_pattern="layers"``).
- ``--dtype {float32,bfloat16}``, ``--repeats`` (default 3), ``--json PATH`` (also write the results).
- ``--with-loop-1thread``: also time PEFT's loop with ``torch.set_num_threads(1)`` (the fast path builds on one
  intra-op thread; this shows how much of the gain that alone gives).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time


def adapter_names(num_categories: int, num_capabilities: int) -> list[str]:
    """The DMoERM layout: router, then per category its task adapter and its experts."""
    names = ["router"]
    for c in range(num_categories):
        names += [f"category_{c}__task"] + [f"category_{c}__capability_{k}" for k in range(num_capabilities)]
    return names


def resolve_backbone(args) -> str:
    if args.backbone:
        return args.backbone
    if args.shape:
        from dmoerm_trl.assets import default_cache_dir

        folder = default_cache_dir() / f"random-{args.shape}"
        if not (folder / "config.json").exists():
            raise SystemExit(
                f"{folder} is missing: run `python benchmarks/memory_params.py --shape {args.shape}` once"
            )
        return str(folder)
    from dmoerm_trl.assets import prepare_smollm2

    return str(prepare_smollm2())


def lora_config(args, num_layers: int):
    from peft import LoraConfig

    extra = {}
    if args.top_layers:
        extra = {
            "layers_to_transform": list(range(num_layers - args.top_layers, num_layers)),
            "layers_pattern": "layers",
        }
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_r,
        lora_dropout=0.05,
        target_modules=args.target_modules.split(","),
        bias="none",
        **extra,
    )


def build_once(path: str, names: list[str], args, method: str) -> dict:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from dmoerm_trl.models.dmoerm._lora_injection import wrap_with_adapters

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    backbone = AutoModel.from_pretrained(path, dtype=getattr(torch, args.dtype))
    load_seconds = time.perf_counter() - start
    config = lora_config(args, backbone.config.num_hidden_layers)
    threads = torch.get_num_threads()
    if method == "loop-1thread":  # the loop with the fast path's one-intra-op-thread setting, to separate the effects
        torch.set_num_threads(1)
    torch.manual_seed(0)
    wall, cpu = time.perf_counter(), time.process_time()
    model = wrap_with_adapters(backbone, names, config, fast=method == "fast")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    torch.set_num_threads(threads)
    table = [(n, tuple(p.shape), str(p.dtype), p.requires_grad) for n, p in model.named_parameters()]
    # a fingerprint of the adapter values (same seed -> both methods must give the same initial weights)
    with torch.no_grad():
        fingerprint = sum(
            float(p.double().sum()) * (i + 1) for i, (n, p) in enumerate(model.named_parameters()) if "lora_" in n
        )
    adapter_parameters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    del model, backbone
    gc.collect()
    return {
        "wall": wall,
        "cpu": cpu,
        "load": load_seconds,
        "table": table,
        "fingerprint": fingerprint,
        "adapter_parameters": adapter_parameters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default: offline SmolLM2-135M-Instruct")
    parser.add_argument("--shape", default=None, choices=("smollm2-360m", "smollm2-1.7b"))
    parser.add_argument("--layouts", default="2x2,5x5,8x8", help="comma-separated CxK")
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--target-modules", default="q_proj,v_proj")
    parser.add_argument("--top-layers", type=int, default=0, help="LoRA only in the top N layers (0: all)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--with-loop-1thread",
        action="store_true",
        help="also time PEFT's loop on one intra-op thread (what part of the gain is threading)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import peft
    import torch

    path = resolve_backbone(args)
    print(
        f"backbone {path} ({args.dtype}), r={args.lora_r} on {args.target_modules}, "
        f"{'top ' + str(args.top_layers) + ' layers' if args.top_layers else 'all layers'}; "
        f"peft {peft.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, {args.repeats} repeat(s), median shown"
    )
    rows = []
    for layout in args.layouts.split(","):
        num_categories, num_capabilities = (int(x) for x in layout.lower().split("x"))
        names = adapter_names(num_categories, num_capabilities)
        methods = ["loop", "fast"] + (["loop-1thread"] if args.with_loop_1thread else [])
        runs = {method: [] for method in methods}
        for repeat in range(args.repeats):
            order = methods if repeat % 2 == 0 else methods[::-1]  # alternate: no warm-up bias
            for method in order:
                runs[method].append(build_once(path, names, args, method))
        others = [run for method in methods if method != "fast" for run in runs[method]]
        same = all(a["table"] == b["table"] for a in others for b in runs["fast"])
        same_values = all(a["fingerprint"] == b["fingerprint"] for a in others for b in runs["fast"])
        row = {
            "layout": layout,
            "adapters": len(names),
            "adapter_parameters": runs["fast"][0]["adapter_parameters"],
            "load_s": statistics.median(r["load"] for r in runs["fast"] + runs["loop"]),
            "same_parameters": same,
            "same_initial_values": same_values,
        }
        for method, method_runs in runs.items():
            row[f"{method}_wall_s"] = statistics.median(r["wall"] for r in method_runs)
            row[f"{method}_cpu_s"] = statistics.median(r["cpu"] for r in method_runs)
            row[f"{method}_wall_all_s"] = [round(r["wall"], 3) for r in method_runs]
        row["speedup_wall"] = row["loop_wall_s"] / row["fast_wall_s"]
        row["speedup_cpu"] = row["loop_cpu_s"] / row["fast_cpu_s"]
        rows.append(row)
        print(f"  {layout}: " + ", ".join(f"{m} {row[f'{m}_wall_all_s']} s" for m in methods), flush=True)

    header = (
        f"{'layout':>7} {'adapters':>8} {'LoRA params':>12} {'load s':>7} {'PEFT loop s':>12} "
        f"{'fast s':>8} {'speedup':>8} {'loop CPU s':>11} {'fast CPU s':>11} {'same model':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        same = "yes" if row["same_parameters"] and row["same_initial_values"] else "NO"
        print(
            f"{row['layout']:>7} {row['adapters']:>8} {row['adapter_parameters']:>12,} {row['load_s']:>7.2f} "
            f"{row['loop_wall_s']:>12.2f} {row['fast_wall_s']:>8.2f} {row['speedup_wall']:>7.1f}x "
            f"{row['loop_cpu_s']:>11.2f} {row['fast_cpu_s']:>11.2f} {same:>11}"
        )
    if args.with_loop_1thread:
        print(
            "PEFT loop on one intra-op thread (s): "
            + ", ".join(f"{row['layout']} {row['loop-1thread_wall_s']:.2f}" for row in rows)
        )
    if args.json:
        from dmoerm_trl.utils.io import atomic_write_json

        atomic_write_json(args.json, {"backbone": path, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
