"""``dmoerm demo``: the whole DMoERM story offline on CPU, in one command (docs/demo.md).

Builds a multi-category preference data set with known ground truth, labels capabilities through the openai client
from a local judge, trains the router + 3 phases and a single-RM baseline, evaluates both against human ranks and
the gold, runs best-of-n with SmolLM2-135M-Instruct as the policy, and writes a report folder.
Measured times with their load in docs/demo.md ("Time"). Reruns reuse the label cache and the finished training stages.
"""

from __future__ import annotations

import argparse
import time

from ._errors import positive_int


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="outputs/demo", help="report folder (default: outputs/demo)")
    parser.add_argument("--fast", action="store_true", help="the small variant (2 categories, fewer pairs/steps)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, judge, training and sampling")
    parser.add_argument(
        "--backbone",
        default=None,
        help="reward backbone path (default: SmolLM2-135M-Instruct's first layers, see docs/demo.md)",
    )
    parser.add_argument("--policy", default=None, help="best-of-n policy path (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--max-length", type=int, default=None, help=argparse.SUPPRESS)  # tests: tiny backbones
    return parser


def run(args: argparse.Namespace) -> int:
    from ..demo import FAST_NOTE, DemoConfig, run_demo

    start = time.perf_counter()
    config = DemoConfig(
        output=args.output,
        fast=args.fast,
        seed=args.seed,
        backbone=args.backbone,
        policy=args.policy,
        threads=args.threads,
        max_length=args.max_length,
    )
    metrics = run_demo(config)
    head = metrics["headline"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    def num(x):
        return "-" if x is None else f"{x:+.3f}"

    print("\n" + "=" * 100)
    print(
        f"Done in {(time.perf_counter() - start) / 60:.1f} min. Report: {config.output}/report.md "
        f"(metrics: {config.output}/metrics.json)"
    )
    print(
        f"  accuracy vs gold (clean test): DMoERM {pct(head['dmoerm_gold_accuracy'])} | single RM "
        f"{pct(head['baseline_gold_accuracy'])} | human labels {pct(head['human_labels_gold_agreement'])}"
    )
    print(
        f"  accuracy vs human ranks (validation): DMoERM {pct(head['dmoerm_human_accuracy'])} | single RM "
        f"{pct(head['baseline_human_accuracy'])};  router (prompt only) {pct(head['router_accuracy_prompt'])}"
    )
    print(
        f"  best-of-n gold gain: DMoERM {num(head['bon_gold_gain_dmoerm'])} | single RM "
        f"{num(head['bon_gold_gain_single_rm'])} | gold oracle {num(head['bon_gold_gain_oracle'])}"
    )
    if config.fast:
        print(f"  note: {FAST_NOTE}")
    return 0
