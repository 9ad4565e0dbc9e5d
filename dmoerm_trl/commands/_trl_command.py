"""Shared plumbing of the TrlParser-based RL commands (``dmoerm ppo``, ``grpo``, ``rloo``, ``bon``): argparse only
forwards the arguments; ``TrlParser`` parses ``--config FILE`` and ``--flag value`` pairs into the dataclasses."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def add_forwarding_parser(subparsers, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    # prefix_chars="+" and no -h: every "--flag" (and --help) goes to TrlParser, which knows the dataclass fields.
    parser = subparsers.add_parser(name, help=help_text, description=description, prefix_chars="+", add_help=False)
    parser.add_argument("trl_args", nargs=argparse.REMAINDER, help="--config FILE and/or --flag value pairs")
    return parser


def setup_logging() -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    for noisy in ("httpx", "datasets", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or setup (one message, exit code 2), not a bug (the ``dmoerm`` set)."""
    from ._errors import user_errors as all_user_errors

    return all_user_errors()


def report(prog: str, summary: dict) -> None:
    """Print the essentials of a run summary as JSON (the full one is in ``<output_dir>/run_summary.json``)."""
    if not summary.get("is_main_process", True):
        return
    brief = {k: summary[k] for k in ("algorithm", "wall_time_s", "global_step") if k in summary}
    if summary.get("overoptimization"):
        first, last = summary["overoptimization"][0], summary["overoptimization"][-1]
        brief["gold_reward"] = [first["gold_reward"], last["gold_reward"]]
        brief["proxy_reward"] = [first["proxy_reward"], last["proxy_reward"]]
        brief["kl"] = [first["kl"], last["kl"]]
    print(f"{prog}: " + json.dumps(brief))


def fail(prog: str, err: BaseException) -> int:
    from ._errors import one_line

    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return 2
