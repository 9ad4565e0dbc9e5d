"""``dmoerm overopt``: plot a run's overoptimization CSV (best-of-n or RL) and fit Gao et al.'s forms.

dmoerm overopt runs/grpo_tiny                      # reads runs/grpo_tiny/overoptimization.csv
dmoerm overopt results.csv --output plot.png --title "DMoERM vs ensembles"
"""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Plot gold and proxy reward against sqrt(KL) from an overoptimization CSV, fit d(a - b d) "
        "(best-of-n) or d(a - b log d) (RL) by least squares, print and save the coefficients.",
    )
    parser.add_argument("path", help="an overoptimization CSV, or a run folder containing overoptimization.csv")
    parser.add_argument("--output", default=None, help="PNG path (default: overoptimization.png beside the CSV)")
    parser.add_argument("--title", default=None, help="plot title")
    return parser


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from ..rl.overoptimization import CSV_NAME, format_fits_table, plot_overoptimization, read_records_csv
    from ..utils.io import atomic_write_text

    path = Path(args.path)
    try:
        records = read_records_csv(path)
    except (ValueError, FileNotFoundError) as err:
        print(f"dmoerm overopt: error: {err}", file=sys.stderr)
        return 2
    folder = path if path.is_dir() else path.parent
    output = Path(args.output) if args.output else folder / "overoptimization.png"
    fits = plot_overoptimization(records, output, title=args.title)
    print(format_fits_table(fits))
    fits_path = output.with_name(output.stem + "_fits.json")
    atomic_write_text(fits_path, json.dumps([f.summary() for f in fits], indent=2))
    print(f"dmoerm overopt: wrote {output} and {fits_path} from {path if path.is_file() else path / CSV_NAME}")
    return 0
