"""``python -m dmoerm_trl.synthetic.generate --out DIR``: write the synthetic preference data set.

Flags mirror :class:`~dmoerm_trl.synthetic.generator.SyntheticDataConfig`. The files (``train.jsonl``,
``test.jsonl``, ``heldout_prompts.jsonl``, ``categories.yaml``, ``world.json``) are each written atomically; the
same options always give byte-identical files.

Example:
    $ python -m dmoerm_trl.synthetic.generate --out data/synthetic --pairs-per-category 300 --seed 0
    $ dmoerm label --data data/synthetic/train.jsonl --categories data/synthetic/categories.yaml ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from .generator import SyntheticDataConfig, generate_dataset, write_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dmoerm_trl.synthetic.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", "--output-dir", dest="out", required=True, help="Output directory.")
    defaults = SyntheticDataConfig()
    for field in dataclasses.fields(SyntheticDataConfig):
        default = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if field.name == "categories":
            parser.add_argument(flag, default=",".join(default), help=field.metadata["help"] + " Comma-separated.")
        else:
            parser.add_argument(
                flag, type=type(default), default=default, help=f"{field.metadata['help']} (default: {default})"
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = {field.name: getattr(args, field.name) for field in dataclasses.fields(SyntheticDataConfig)}
    try:
        config = SyntheticDataConfig(**options)
        started = time.perf_counter()
        dataset = generate_dataset(config)
        paths = write_dataset(dataset, args.out)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = dataset.summary
    print(
        f"Wrote {summary['train_pairs']} training pairs (human flip rate measured "
        f"{summary['human_flip_rate_measured']}) and {summary['test_pairs']} gold test pairs in "
        f"{time.perf_counter() - started:.1f} s:"
    )
    print(json.dumps(paths, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
