"""``dmoerm rloo``: TRL RLOO with a DMoERM (or any reward model, or an ensemble) in ``reward_funcs``.

    dmoerm rloo --config recipes/configs/rloo_tiny.yaml
    dmoerm rloo --help            # every flag (RLScriptArguments + RLOOConfig)

Same options as ``dmoerm grpo``. Under ``accelerate launch`` use ``recipes/rloo.py``.
"""

from __future__ import annotations

import argparse

from . import grpo


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    return grpo.add_parser(subparsers, name, help_text)


def run(args: argparse.Namespace) -> int:
    return main(args.trl_args)


def main(argv: list[str]) -> int:
    return grpo.main(argv, algorithm="rloo")
