"""``dmoerm ppo``: TRL PPO with a DMoERM (or any reward model, or an ensemble) as the reward model.

    dmoerm ppo --config recipes/configs/ppo_tiny.yaml
    dmoerm ppo --config recipes/configs/ppo_tiny.yaml --learning_rate 1e-5 --output_dir runs/ppo
    dmoerm ppo --help             # the script's flags (RLScriptArguments)
    dmoerm ppo --help-all         # every flag (RLScriptArguments + PPOConfig)

Needs trl>=1.10,<1.13 (``pip install "dmoerm-trl[ppo]"``). Under ``accelerate launch`` use ``recipes/ppo.py``.
"""

from __future__ import annotations

from ._trl_command import TrlCommand, report

DESCRIPTION = (
    "Train a policy with TRL PPO against a DMoERM (or HF reward model, or several combined into an ensemble); "
    "optionally track a gold reward model (overoptimization CSV + plot). Options come from --config YAML and/or flags. "
    'Needs trl>=1.10,<1.13 (pip install "dmoerm-trl[ppo]"): TRL removed PPO in 1.13.'
)


def _dataclasses():
    from ..rl.ppo import require_ppo
    from ..rl.recipe_args import RLScriptArguments

    PPOConfig, _ = require_ppo()  # PPOUnavailableError on a TRL without PPO: one line, exit code 2
    return (RLScriptArguments, PPOConfig)


def _work(parsed, prog: str) -> int:
    from ..rl.ppo import run_ppo

    script_args, training_args = parsed
    report(prog, run_ppo(script_args, training_args))
    return 0


COMMAND = TrlCommand("dmoerm ppo", _dataclasses, _work, DESCRIPTION)
add_parser, run, main = COMMAND.add_parser, COMMAND.run, COMMAND.main
