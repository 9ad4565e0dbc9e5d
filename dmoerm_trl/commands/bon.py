"""``dmoerm bon``: best-of-n sampling with a DMoERM (or any reward model, or an ensemble), and the best-of-n
overoptimization evaluation against a gold reward model.

    dmoerm bon --config recipes/configs/best_of_n_tiny.yaml                  # best of n per prompt -> best_of_n.jsonl
    dmoerm bon --config recipes/configs/compare_proxies_tiny.yaml            # proxies vs gold -> CSV + PNG + fits
    dmoerm bon --policy_model_path P --reward_model_paths R --dataset_path prompts.jsonl --n 16
    dmoerm bon --help
"""

from __future__ import annotations

from ._trl_command import TrlCommand

DESCRIPTION = (
    "Sample n completions per prompt and keep the best by a reward model; with --gold_model_path, estimate for every "
    "n <= N the expected proxy and gold reward of best-of-n (unbiased estimator) for one or several proxies, and "
    "plot them against sqrt(KL_bon). Options come from --config YAML and/or flags."
)


def _dataclasses():
    from ..rl.bon_recipe import BestOfNArguments

    return (BestOfNArguments,)


def _work(parsed, prog: str) -> int:
    from ..rl.bon_recipe import run_best_of_n
    from ..rl.overoptimization import fit_records, format_fits_table

    (args,) = parsed
    summary = run_best_of_n(args)
    if summary["mode"] == "evaluate":
        print(format_fits_table(fit_records(summary["records"])))
        print(f"{prog}: wrote {args.output_dir}/overoptimization.csv and overoptimization.png")
    else:
        print(f"{prog}: mean best score {summary['mean_best_score']:.4f}; wrote {args.output_dir}/best_of_n.jsonl")
    return 0


COMMAND = TrlCommand("dmoerm bon", _dataclasses, _work, DESCRIPTION)
add_parser, run, main = COMMAND.add_parser, COMMAND.run, COMMAND.main
