"""``dmoerm ppo``: TRL PPO with a DMoERM (or any reward model, or an ensemble) as the reward model.

    dmoerm ppo --config recipes/configs/ppo_tiny.yaml
    dmoerm ppo --config recipes/configs/ppo_tiny.yaml --learning_rate 1e-5 --output_dir runs/ppo
    dmoerm ppo --help             # every flag (RLScriptArguments + PPOConfig)

Needs trl>=1.10,<1.13 (``pip install "dmoerm-trl[ppo]"``). Under ``accelerate launch`` use ``recipes/ppo.py``.
"""

from __future__ import annotations

import argparse

from ._errors import one_line_parser_errors
from ._trl_command import add_forwarding_parser, fail, report, setup_logging, user_errors

DESCRIPTION = (
    "Train a policy with TRL PPO against a DMoERM (or HF reward model, or several combined into an ensemble); "
    "optionally track a gold reward model (overoptimization CSV + plot). Options come from --config YAML and/or flags."
)


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    return add_forwarding_parser(subparsers, name, help_text, DESCRIPTION)


def run(args: argparse.Namespace) -> int:
    return main(args.trl_args)


def main(argv: list[str]) -> int:
    from trl import TrlParser

    from ..rl.ppo import require_ppo, run_ppo
    from ..rl.recipe_args import RLScriptArguments

    setup_logging()
    try:
        PPOConfig, _ = require_ppo()
        parser = TrlParser((RLScriptArguments, PPOConfig), prog="dmoerm ppo", description=DESCRIPTION)
        script_args, training_args = one_line_parser_errors(parser).parse_args_and_config(list(argv))
        summary = run_ppo(script_args, training_args)
    except user_errors() as err:
        return fail("dmoerm ppo", err)
    report("dmoerm ppo", summary)
    return 0
