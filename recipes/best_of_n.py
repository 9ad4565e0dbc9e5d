"""Best-of-n sampling with a DMoERM (or any reward model, or an ensemble); with a gold reward model, the best-of-n
overoptimization evaluation of one or several proxies on the same samples. Thin script, as TRL's are.

    python -m dmoerm_trl.rl.tiny_assets tiny-rl-assets
    python recipes/best_of_n.py --config recipes/configs/best_of_n_tiny.yaml         # best completions
    python recipes/best_of_n.py --config recipes/configs/compare_proxies_tiny.yaml   # DMoERM vs single RM vs ensembles

Same code as ``dmoerm bon``.
"""

from __future__ import annotations

import sys

from dmoerm_trl.commands.bon import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
