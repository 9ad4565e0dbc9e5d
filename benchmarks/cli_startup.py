"""How long ``dmoerm --help`` (and friends) take, and whether they import torch; optionally side by side with
another checkout (e.g. main before the lazy import).

    python benchmarks/cli_startup.py                       # this checkout
    python benchmarks/cli_startup.py --compare /work/main  # this checkout vs another, interleaved runs

Prints a table: median wall seconds over --repeats runs (a fresh interpreter each), and whether torch was imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "import dmoerm_trl": "import dmoerm_trl",
    "dmoerm --help": "from dmoerm_trl.cli import main; main(['--help'])",
    "dmoerm score --help": "from dmoerm_trl.cli import main; main(['score', '--help'])",
    "dmoerm label --help": "from dmoerm_trl.cli import main; main(['label', '--help'])",
    "dmoerm train --help": "from dmoerm_trl.cli import main; main(['train', '--help'])",
    "dmoerm grpo --help": "from dmoerm_trl.cli import main; main(['grpo', '--help'])",
    "dmoerm train --help-all": "from dmoerm_trl.cli import main; main(['train', '--help-all'])",
}
PROBE = "\nimport sys; print('TORCH=' + str('torch' in sys.modules), file=sys.stderr)"


def run_once(root: str, code: str) -> tuple[float, bool]:
    env = dict(os.environ, PYTHONPATH=root)
    wrapped = f"try:\n    {code}\nexcept SystemExit:\n    pass{PROBE}"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", wrapped], env=env, capture_output=True, text=True, cwd=root, check=False
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{code!r} failed under {root}: {result.stderr[-500:]}")
    return seconds, "TORCH=True" in result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", default=None, help="another checkout to time side by side")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    roots = {"this": str(Path(__file__).resolve().parents[1])}
    if args.compare:
        roots["other"] = str(Path(args.compare).resolve())
    rows = []
    for name, code in CASES.items():
        times = {label: [] for label in roots}
        torch_loaded = {}
        for _ in range(args.repeats):
            for label, root in roots.items():  # interleaved, so load changes hit both alike
                seconds, loaded = run_once(root, code)
                times[label].append(seconds)
                torch_loaded[label] = loaded
        rows.append((name, {label: statistics.median(v) for label, v in times.items()}, torch_loaded))
    header = f"{'command':<24}" + "".join(f"{label + ' s':>10}{label + ' torch':>12}" for label in roots)
    if args.compare:
        header += f"{'other/this':>12}"
    print(header)
    for name, medians, loaded in rows:
        line = f"{name:<24}" + "".join(f"{medians[label]:>10.2f}{loaded[label]!s:>12}" for label in roots)
        if args.compare:
            line += f"{medians['other'] / medians['this']:>11.1f}x"
        print(line)


if __name__ == "__main__":
    main()
