"""TRL PPO with a DMoERM (or any reward model, or an ensemble) as the reward. Thin script, as TRL's are.

    python -m dmoerm_trl.rl.tiny_assets tiny-rl-assets          # tiny offline models + prompts (a few seconds)
    accelerate launch --config_file accelerate_configs/cpu_multi_process.yaml recipes/ppo.py \
        --config recipes/configs/ppo_tiny.yaml

Any config value can be overridden on the command line (``--learning_rate 1e-5``); ``--help-all`` lists them all.
Same code as ``dmoerm ppo``.
"""

from __future__ import annotations

import sys

from dmoerm_trl.commands.ppo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
