"""``dmoerm grpo``: TRL GRPO with a DMoERM (or any reward model, or an ensemble) in ``reward_funcs``.

    dmoerm grpo --config recipes/configs/grpo_tiny.yaml
    dmoerm grpo --config recipes/configs/grpo_tiny.yaml --extra_reward_functions dmoerm_trl.rl.rewards:length_penalty \
        --reward_weights 1.0 0.2
    dmoerm grpo --help            # every flag (RLScriptArguments + GRPOConfig)

Works with trl 1.12 and 1.16. Under ``accelerate launch`` use ``recipes/grpo.py``.
"""

from __future__ import annotations

import argparse

from ._errors import one_line_parser_errors
from ._trl_command import add_forwarding_parser, fail, report, setup_logging, user_errors

DESCRIPTION = (
    "Train a policy with TRL {name} using a DMoERM (or HF reward model, or an ensemble) as reward_funcs, alone or "
    "with rule-based reward functions and reward_weights; optionally track a gold reward model. Options come from "
    "--config YAML and/or flags."
)


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    return add_forwarding_parser(subparsers, name, help_text, DESCRIPTION.format(name=name.upper()))


def run(args: argparse.Namespace) -> int:
    return main(args.trl_args)


def main(argv: list[str], algorithm: str = "grpo") -> int:
    from trl import GRPOConfig, RLOOConfig, TrlParser

    from ..rl.grpo import run_grpo
    from ..rl.recipe_args import RLScriptArguments

    setup_logging()
    prog = f"dmoerm {algorithm}"
    config_class = GRPOConfig if algorithm == "grpo" else RLOOConfig
    try:
        parser = TrlParser(
            (RLScriptArguments, config_class), prog=prog, description=DESCRIPTION.format(name=algorithm.upper())
        )
        script_args, training_args = one_line_parser_errors(parser).parse_args_and_config(list(argv))
        summary = run_grpo(script_args, training_args, algorithm=algorithm)
    except user_errors() as err:
        return fail(prog, err)
    report(prog, summary)
    return 0
