"""Train a DMoERM (router + three phases) with TRL; every stage resumable. Thin script, as TRL's are.

    python recipes/train_dmoerm.py --config recipes/configs/tiny_cpu.yaml
    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml recipes/train_dmoerm.py \
        --config recipes/configs/X.yaml

Any config value can be overridden on the command line (``--task_learning_rate 1e-4``); ``--help`` lists the DMoERM ones, ``--help-all`` all.
"""

from __future__ import annotations

import sys

from dmoerm_trl.commands.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
