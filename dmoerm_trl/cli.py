"""The ``dmoerm`` command.

Each subcommand lives in its own module and is imported only when it runs, so ``dmoerm --help`` stays fast and a
subcommand's heavy dependencies (deepspeed, matplotlib, the judge model) are loaded only by the subcommand that needs
them. A module registers a subcommand with two functions::

    def add_parser(subparsers) -> argparse.ArgumentParser   # declares the flags
    def run(args: argparse.Namespace) -> int                  # does the work, returns the exit code

A user mistake found anywhere below ``run`` raises a ``ValueError``/``FileNotFoundError`` whose message names the
file/field/flag and the fix; :func:`main` prints it as one line and returns 2 (see ``commands/_errors.py``).

Example:
    $ dmoerm --help
    $ dmoerm info ./my-dmoerm
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .commands._errors import OneLineArgumentParser, run_command

# name -> (module, one-line help). Add a line here to add a subcommand.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("dmoerm_trl.commands.info", "Show a saved DMoERM's base model, categories, capabilities and parameters."),
    "score": (
        "dmoerm_trl.commands.score",
        "Score conversations with a saved DMoERM and print per-capability rewards.",
    ),
    "example": ("dmoerm_trl.commands.example", "Build a DMoERM on a real pretrained LM, save, reload and score."),
    "label": ("dmoerm_trl.commands.label", "Label capability preferences with an OpenAI-compatible LLM judge."),
    "serve": ("dmoerm_trl.commands.serve", "Serve a reward model over HTTP (OpenRLHF /get_reward, /v1/rewards)."),
    "serve-judge": ("dmoerm_trl.commands.serve_judge", "Serve a local HF causal LM as an OpenAI-compatible judge."),
    "ppo": ("dmoerm_trl.commands.ppo", "Train a policy with TRL PPO against a DMoERM (or any RM / an ensemble)."),
    "grpo": ("dmoerm_trl.commands.grpo", "Train a policy with TRL GRPO using a DMoERM as reward_funcs."),
    "rloo": ("dmoerm_trl.commands.rloo", "Train a policy with TRL RLOO using a DMoERM as reward_funcs."),
    "bon": ("dmoerm_trl.commands.bon", "Best-of-n sampling with a reward model; overoptimization vs a gold RM."),
    "overopt": ("dmoerm_trl.commands.overopt", "Plot a run's overoptimization CSV and fit Gao et al.'s forms."),
    "push": (
        "dmoerm_trl.commands.push",
        "Upload a saved DMoERM (adapters, heads, model card with metrics) to the Hub.",
    ),
    "train": ("dmoerm_trl.commands.train", "Train a DMoERM (router + 3 phases) from a YAML config; resumable."),
    "train-baseline": ("dmoerm_trl.commands.train_baseline", "Train the single-RM baseline (TRL RewardTrainer)."),
    "demo": ("dmoerm_trl.commands.demo", "Offline end to end: data, labels, training, eval, best-of-n, report."),
    "eval": ("dmoerm_trl.commands.eval", "Pairwise accuracy per category, router and experts; vs a baseline RM."),
}


def _lazy_add_parser(subparsers, name: str, module_name: str, help_text: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:  # the subcommand is not part of this build yet
            return
        raise
    parser = module.add_parser(subparsers, name, help_text)
    parser.set_defaults(_run=module.run, _prog=f"dmoerm {name}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="dmoerm",
        description="DMoERM: a double-layer mixture-of-experts reward model for TRL (arXiv 2403.01197).",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        _lazy_add_parser(subparsers, name, module_name, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    # A user mistake (bad file, value, flag or config) is one line on stderr and exit code 2, never a traceback.
    return run_command(args._run, args, args._prog)


if __name__ == "__main__":
    sys.exit(main())
