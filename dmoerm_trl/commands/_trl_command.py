"""One shape for the ``TrlParser`` commands (``train``, ``train-baseline``, ``bon``, ``ppo``, ``grpo``, ``rloo``).

A command module declares its dataclasses and its work function and hands them to :class:`TrlCommand`, which gives
it the three functions every ``dmoerm`` subcommand has (``add_parser``, ``run``, ``main``): argparse only forwards
the arguments, ``TrlParser`` parses ``--config FILE`` and ``--flag value`` pairs into the dataclasses (both
``--max_length`` and ``--max-length`` are accepted, help shows the first), logging is set up once, and a user mistake
is one line on stderr with exit code 2 (:func:`dmoerm_trl.commands._errors.run_command`). ``--help`` lists the
command's own flags from a stored text, without importing TRL; ``--help-all`` lists every flag (``_help.py``).

Example:
    >>> from dmoerm_trl.commands._trl_command import TrlCommand
    >>> def work(parsed, prog):  # parsed: one instance per dataclass
    ...     return 0
    >>> command = TrlCommand("dmoerm demo-cmd", lambda: (), work, "A command.")
    >>> command.prog
    'dmoerm demo-cmd'
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence

from ._errors import OneSpellingDefaultsHelpFormatter, one_line_parser_errors, run_command
from ._help import HELP_ALL, HELP_FLAGS, stored_help


def add_forwarding_parser(subparsers, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    """An argparse subparser that forwards every argument (and ``--help``) to the command's ``TrlParser``."""
    # prefix_chars="+" and no -h: every "--flag" (and --help) goes to TrlParser, which knows the dataclass fields.
    parser = subparsers.add_parser(name, help=help_text, description=description, prefix_chars="+", add_help=False)
    parser.add_argument("trl_args", nargs=argparse.REMAINDER, help="--config FILE and/or --flag value pairs")
    return parser


def setup_logging() -> None:
    """INFO logs with time and logger name; the chatty HTTP/datasets loggers at WARNING."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    for noisy in ("httpx", "datasets", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class TrlCommand:
    """A ``dmoerm`` subcommand whose flags are the fields of ``dataclasses()`` (parsed by ``TrlParser``).

    ``dataclasses`` is a function returning the dataclass types (so importing the command stays light: TRL and torch
    are imported only when it runs); ``work(parsed, prog)`` gets one instance per dataclass and returns the exit code.
    """

    def __init__(
        self,
        prog: str,
        dataclasses: Callable[[], Sequence[type]],
        work: Callable[[tuple, str], int | None],
        description: str,
    ):
        self.prog, self.dataclasses, self.work, self.description = prog, dataclasses, work, description

    def add_parser(self, subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
        return add_forwarding_parser(subparsers, name, help_text, self.description)

    def run(self, args: argparse.Namespace) -> int:
        return self.main(args.trl_args)

    def build_parser(self):
        """The ``TrlParser`` over the dataclasses (bad flags: one line, exit code 2)."""
        from trl import TrlParser

        parser = TrlParser(
            tuple(self.dataclasses()),
            prog=self.prog,
            description=self.description,
            formatter_class=OneSpellingDefaultsHelpFormatter,
        )
        return one_line_parser_errors(parser)

    def parse(self, argv: Sequence[str]) -> tuple:
        """One dataclass instance per type from ``--config``/flags; raises ``ValueError`` on bad values (an unknown
        key or flag named in the user's words, not HfArgumentParser's)."""
        argv = list(argv)
        try:
            parsed = tuple(self.build_parser().parse_args_and_config(argv))
        except ValueError as error:
            unknown = _unknown_names(str(error))
            if unknown is None:
                raise
            where, names = unknown
            if where == "flags":
                listed = ", ".join(f"--{name}" for name in names)
                raise ValueError(f"unknown flag(s) {listed}; `{self.prog} --help` lists the flags it takes") from None
            config = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"), "the --config file")
            raise ValueError(
                f"{config}: unknown key(s) {', '.join(names)}; `{self.prog} --help` lists the keys it takes (each "
                "flag without its --)"
            ) from None
        from ..paths import require_output_dir

        for arguments in parsed:  # an output_dir that is a file: one line now, not an OSError after loading models
            if isinstance(getattr(arguments, "output_dir", None), str) and arguments.output_dir:
                require_output_dir(arguments.output_dir, "--output_dir")
        return parsed

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv`` (default ``sys.argv[1:]``) and run the work; a user mistake -> one line, exit code 2."""
        import sys

        argv = list(sys.argv[1:] if argv is None else argv)
        if any(arg in HELP_FLAGS for arg in argv) and HELP_ALL not in argv:
            short = stored_help(self.prog)  # the command's own flags, without importing TRL (torch)
            if short is not None:
                print(short, end="")
                sys.exit(0)
        argv = ["--help" if arg == HELP_ALL else arg for arg in argv]
        setup_logging()
        return run_command(lambda _: self.work(self.parse(argv), self.prog), None, self.prog)


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


def _unknown_names(message: str) -> tuple[str, list[str]] | None:
    """``(where, names)`` of HfArgumentParser's unknown-argument errors (config file or command line), else None.

    Example:
        >>> _unknown_names("Unknown arguments from config file: ['--lora_rr', '4']. Please remove them, ...")
        ('the config file', ['lora_rr'])
    """
    import re

    if message.startswith("Unknown arguments from config file"):
        where = "the config file"
    elif message.startswith("Some specified arguments are not used by the HfArgumentParser"):
        where = "flags"
    else:
        return None
    names = re.findall(r"'--([^']+)'", message)
    return (where, names) if names else None
