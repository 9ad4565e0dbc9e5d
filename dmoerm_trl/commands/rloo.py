"""``dmoerm rloo``: TRL RLOO with a DMoERM (or any reward model, or an ensemble) in ``reward_funcs``.

    dmoerm rloo --config recipes/configs/rloo_tiny.yaml
    dmoerm rloo --help            # the script's flags (RLScriptArguments)
    dmoerm rloo --help-all        # every flag (RLScriptArguments + RLOOConfig)

Same options as ``dmoerm grpo``. Under ``accelerate launch`` use ``recipes/rloo.py``.
"""

from __future__ import annotations

from .grpo import command

COMMAND = command("rloo")
add_parser, run, main = COMMAND.add_parser, COMMAND.run, COMMAND.main
