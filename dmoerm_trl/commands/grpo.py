"""``dmoerm grpo``: TRL GRPO with a DMoERM (or any reward model, or an ensemble) in ``reward_funcs``.

    dmoerm grpo --config recipes/configs/grpo_tiny.yaml
    dmoerm grpo --config recipes/configs/grpo_tiny.yaml --extra_reward_functions dmoerm_trl.rl.rewards:length_penalty \
        --reward_weights 1.0 0.2
    dmoerm grpo --help            # the script's flags (RLScriptArguments)
    dmoerm grpo --help-all        # every flag (RLScriptArguments + GRPOConfig)

Works with trl 1.12 and 1.16. Under ``accelerate launch`` use ``recipes/grpo.py``.
"""

from __future__ import annotations

from ._trl_command import TrlCommand, report

DESCRIPTION = (
    "Train a policy with TRL {name} using a DMoERM (or HF reward model, or an ensemble) as reward_funcs, alone or "
    "with rule-based reward functions and reward_weights; optionally track a gold reward model. Options come from "
    "--config YAML and/or flags."
)


def command(algorithm: str) -> TrlCommand:
    """The ``dmoerm grpo``/``dmoerm rloo`` command (same script arguments, the algorithm's TRL config)."""

    def dataclasses():
        from trl import GRPOConfig, RLOOConfig

        from ..rl.recipe_args import RLScriptArguments

        return (RLScriptArguments, GRPOConfig if algorithm == "grpo" else RLOOConfig)

    def work(parsed, prog: str) -> int:
        from ..rl.grpo import run_grpo

        script_args, training_args = parsed
        report(prog, run_grpo(script_args, training_args, algorithm=algorithm))
        return 0

    return TrlCommand(f"dmoerm {algorithm}", dataclasses, work, DESCRIPTION.format(name=algorithm.upper()))


COMMAND = command("grpo")
add_parser, run, main = COMMAND.add_parser, COMMAND.run, COMMAND.main
