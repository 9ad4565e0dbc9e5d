"""``dmoerm bon``: best-of-n sampling with a DMoERM (or any reward model, or an ensemble), and the best-of-n
overoptimization evaluation against a gold reward model.

    dmoerm bon --config recipes/configs/best_of_n_tiny.yaml                  # best of n per prompt -> best_of_n.jsonl
    dmoerm bon --config recipes/configs/compare_proxies_tiny.yaml            # proxies vs gold -> CSV + PNG + fits
    dmoerm bon --policy_model_path P --reward_model_paths R --dataset_path prompts.jsonl --n 16
    dmoerm bon --help
"""

from __future__ import annotations

import argparse

from ._errors import one_line_parser_errors
from ._trl_command import add_forwarding_parser, fail, setup_logging, user_errors

DESCRIPTION = (
    "Sample n completions per prompt and keep the best by a reward model; with --gold_model_path, estimate for every "
    "n <= N the expected proxy and gold reward of best-of-n (unbiased estimator) for one or several proxies, and "
    "plot them against sqrt(KL_bon). Options come from --config YAML and/or flags."
)


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    return add_forwarding_parser(subparsers, name, help_text, DESCRIPTION)


def run(args: argparse.Namespace) -> int:
    return main(args.trl_args)


def main(argv: list[str]) -> int:
    from trl import TrlParser

    from ..rl.bon_recipe import BestOfNArguments, run_best_of_n
    from ..rl.overoptimization import fit_records, format_fits_table

    setup_logging()
    try:
        parser = TrlParser((BestOfNArguments,), prog="dmoerm bon", description=DESCRIPTION)
        (args,) = one_line_parser_errors(parser).parse_args_and_config(list(argv))
        summary = run_best_of_n(args)
    except user_errors() as err:
        return fail("dmoerm bon", err)
    if summary["mode"] == "evaluate":
        print(format_fits_table(fit_records(summary["records"])))
        print(f"dmoerm bon: wrote {args.output_dir}/overoptimization.csv and overoptimization.png")
    else:
        print(f"dmoerm bon: mean best score {summary['mean_best_score']:.4f}; wrote {args.output_dir}/best_of_n.jsonl")
    return 0
