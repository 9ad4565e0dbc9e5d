"""Parameters and peak memory: one shared-base DMoERM against per-category base copies (the paper code's layout).

Each layout is built and serves every category once (inference, B=8, T=128) in its own subprocess, so peak RSS is measured
cleanly and side by side in one run (peak RSS = ``ru_maxrss``, which includes the Python + torch process itself; the
table also gives the peak above the process's RSS after its imports, and the RSS left after serving):

- ``dmoerm CxK``: this package: one frozen base, C task adapters + C*K expert adapters + router adapter, heads.
- ``dmoerm 1xK``: the same with one category (for the "5 categories cost at most 1.15x of 1" goal).
- ``paper copies CxK``: C full base copies (the paper's code builds one backbone per category and fully fine-tunes
  it in phase 1), each with its K LoRA experts and heads; all of the base copies are trainable in phase 1.

    python benchmarks/memory_params.py                   # SmolLM2-135M-Instruct (offline copy), 5 x 5
    python benchmarks/memory_params.py --lora-r 8        # smaller experts
    python benchmarks/memory_params.py --trunk-layers 22 --layouts dmoerm,dmoerm-1   # adapters in the top 8 layers
    python benchmarks/memory_params.py --shape smollm2-1.7b --layouts dmoerm,dmoerm-1   # the paper's scale
    python benchmarks/memory_params.py --backbone PATH --categories 3 --capabilities 4

Flags:

- ``--backbone PATH``: a pretrained backbone folder (default: the offline SmolLM2-135M-Instruct copy).
- ``--shape {smollm2-360m,smollm2-1.7b}``: instead, a Llama backbone with that model's shape and *random* weights
  (peak memory does not depend on the weight values; no download), built from a config once and saved with
  ``save_pretrained`` (bf16 safetensors) under ``$DMOERM_CACHE/random-<shape>`` so that ``from_backbone(path)``
  loads it like a pretrained model (in ``--dtype``).
- ``--dtype {float32,bfloat16}``: the dtype the backbone is loaded in (default float32, as the paper's code).
- ``--lora-r R``: LoRA rank of every adapter (default 32, the paper's; on q_proj/v_proj).
- ``--trunk-layers L``: the dmoerm layouts with a shared trunk (adapters only above the bottom L layers; default 0,
  adapters in every layer as in the paper).
- ``--layouts``: comma-separated subset of ``dmoerm,dmoerm-1,paper-copies`` (e.g. skip ``paper-copies`` when C full
  base copies do not fit in memory: its parameter counts are then computed as C x the 1-category model's, marked
  "not run").
- ``--batch``, ``--length``: the serving forward; ``--json PATH``: also write the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

# Shapes of the SmolLM2 family (from their published config.json files); the paper's backbone is ~1.8B (Qwen-1.8B).
SHAPES = {
    "smollm2-360m": {
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
    },
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
}
LAYOUTS = ("dmoerm", "dmoerm-1", "paper-copies")


def random_backbone(shape: str) -> str:
    """A folder holding a Llama backbone of ``shape`` with random weights (bf16 safetensors), made once."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    from dmoerm_trl.assets import default_cache_dir
    from dmoerm_trl.utils.io import atomic_path

    folder = default_cache_dir() / f"random-{shape}"
    if (folder / "config.json").exists():
        return str(folder)
    config = LlamaConfig(
        vocab_size=49152,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    model = LlamaModel(config).to(torch.bfloat16)
    with atomic_path(folder, directory=True) as tmp:
        model.save_pretrained(tmp)
    return str(folder)


def rss_mib() -> float:
    """Current resident set size of this process (VmRSS), MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def categories_for(num_categories: int, num_capabilities: int) -> dict[str, list[str]]:
    return {f"category_{c}": [f"capability_{k}" for k in range(num_capabilities)] for c in range(num_categories)}


def measure(
    layout: str,
    backbone: str,
    num_categories: int,
    num_capabilities: int,
    batch: int,
    length: int,
    lora_r: int = 32,
    dtype: str = "float32",
    trunk_layers: int = 0,
) -> dict:
    import torch

    from dmoerm_trl import DMoERMForSequenceClassification

    baseline_mib = max_rss_mib()  # the process after importing torch, transformers, peft
    kwargs = {"lora_r": lora_r, "dtype": getattr(torch, dtype)}
    torch.manual_seed(0)
    start = time.perf_counter()
    from transformers import AutoConfig

    input_ids = torch.randint(10, min(1000, AutoConfig.from_pretrained(backbone).vocab_size), (batch, length))
    if layout == "paper-copies":
        models = [
            DMoERMForSequenceClassification.from_backbone(
                backbone, categories_for(1, num_capabilities), **kwargs
            ).eval()
            for _ in range(num_categories)
        ]
        built_mib = max_rss_mib()
        counts = [m.num_parameters_by_part() for m in models]
        total = sum(c["total"] for c in counts)
        # phase 1 of the paper fully fine-tunes each category's base; later phases train the LoRA experts and heads.
        trainable = sum(c["base"] + c["adapters"] + c["heads"] for c in counts)
        with torch.no_grad():  # serve every category once, as a deployed reward model must
            for model in models:
                model(input_ids=input_ids, categories=0)
    else:
        cats = num_categories if layout == "dmoerm" else 1
        model = DMoERMForSequenceClassification.from_backbone(
            backbone, categories_for(cats, num_capabilities), trunk_layers=trunk_layers, **kwargs
        ).eval()
        built_mib = max_rss_mib()
        counts = model.num_parameters_by_part()
        total = counts["total"]
        trainable = counts["adapters"] + counts["heads"]  # the base is never trained
        with torch.no_grad():  # rows spread over every category
            model(input_ids=input_ids, categories=[i % cats for i in range(batch)])
    return {
        "total": total,
        "trainable": trainable,
        "peak_rss_mib": max_rss_mib(),
        "baseline_rss_mib": baseline_mib,
        "peak_after_build_mib": built_mib,
        "rss_after_serving_mib": rss_mib(),
        "seconds": time.perf_counter() - start,
    }


def fmt_mib(value) -> str:
    return "not run" if value is None else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default: offline SmolLM2-135M-Instruct")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES), help="random-weight backbone of this shape")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--trunk-layers", type=int, default=0, help="shared trunk of the dmoerm layouts")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset of " + ",".join(LAYOUTS))
    parser.add_argument("--categories", type=int, default=5)
    parser.add_argument("--capabilities", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.shape is not None and args.backbone is not None:
        parser.error("give --backbone or --shape, not both")
    if args.shape is not None:
        args.backbone = random_backbone(args.shape)
    elif args.backbone is None:
        from dmoerm_trl.assets import prepare_smollm2

        args.backbone = prepare_smollm2()
    if args._measure:
        result = measure(
            args._measure,
            args.backbone,
            args.categories,
            args.capabilities,
            args.batch,
            args.length,
            lora_r=args.lora_r,
            dtype=args.dtype,
            trunk_layers=args.trunk_layers,
        )
        print(json.dumps(result))
        return
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown or not {"dmoerm", "dmoerm-1"} <= set(layouts):
        parser.error(f"--layouts must include dmoerm and dmoerm-1, from {', '.join(LAYOUTS)}; got {args.layouts!r}")
    c, k = args.categories, args.capabilities
    labels = {
        "dmoerm": f"dmoerm {c}x{k} (shared base)",
        "dmoerm-1": f"dmoerm 1x{k} (shared base)",
        "paper-copies": f"paper copies {c}x{k} ({c} bases)",
    }
    results = {}
    for layout in LAYOUTS:
        if layout not in layouts:
            continue
        command = [
            sys.executable,
            __file__,
            "--_measure",
            layout,
            "--backbone",
            args.backbone,
            "--categories",
            str(c),
            "--capabilities",
            str(k),
            "--batch",
            str(args.batch),
            "--length",
            str(args.length),
            "--lora-r",
            str(args.lora_r),
            "--dtype",
            args.dtype,
            "--trunk-layers",
            str(args.trunk_layers),
        ]
        print(f"measuring {labels[layout]} ...", file=sys.stderr, flush=True)
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[layout] = json.loads(output)
    ours, one = results["dmoerm"], results["dmoerm-1"]
    if "paper-copies" not in results:  # C copies of the 1-category model: counted, not built
        results["paper-copies"] = {"total": c * one["total"], "trainable": c * one["total"], "not_run": True}
    paper = results["paper-copies"]
    print(
        f"\nbackbone {args.backbone} ({args.dtype}); {c} categories x {k} capabilities; LoRA r={args.lora_r}; "
        f"trunk {args.trunk_layers} layers; "
        f"forward B={args.batch} T={args.length}; load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}\n"
    )
    print(
        "| layout | total params | trainable params | peak RSS (MiB) | peak above imports (MiB) "
        "| RSS after serving (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for layout, r in results.items():
        if r.get("not_run"):
            print(
                f"| {labels[layout]} | {r['total']:,} (counted) | {r['trainable']:,} (counted) | not run | not run "
                "| not run |"
            )
            continue
        print(
            f"| {labels[layout]} | {r['total']:,} | {r['trainable']:,} | {fmt_mib(r['peak_rss_mib'])} "
            f"| {fmt_mib(r['peak_rss_mib'] - r['baseline_rss_mib'])} | {fmt_mib(r['rss_after_serving_mib'])} |"
        )
    print()
    line = (
        f"paper copies / dmoerm: total params {paper['total'] / ours['total']:.2f}x, "
        f"trainable {paper['trainable'] / ours['trainable']:.2f}x"
    )
    if not paper.get("not_run"):
        line += f", peak RSS {paper['peak_rss_mib'] / ours['peak_rss_mib']:.2f}x"
    print(line)
    net = (ours["peak_rss_mib"] - ours["baseline_rss_mib"]) / (one["peak_rss_mib"] - one["baseline_rss_mib"])
    print(
        f"dmoerm {c} categories / 1 category: total params {ours['total'] / one['total']:.3f}x, "
        f"peak RSS {ours['peak_rss_mib'] / one['peak_rss_mib']:.3f}x (goal <= 1.15x), "
        f"peak above imports {net:.3f}x"
    )
    if args.json:
        from dmoerm_trl.utils.io import atomic_write_json

        atomic_write_json(args.json, {"args": vars(args), **{labels[key]: r for key, r in results.items()}})


if __name__ == "__main__":
    main()
