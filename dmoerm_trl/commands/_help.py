"""A fast ``--help`` for the ``TrlParser`` commands (``train``, ``train-baseline``, ``bon``, ``ppo``, ``grpo``,
``rloo``).

Their full help lists the fields of TRL's configs (``RewardConfig``, ``GRPOConfig`` ...), which import torch: seconds
before a line is printed. So ``dmoerm train --help`` prints the command's own flags (the fields the ``dmoerm_trl``
dataclasses declare) from a text checked into the package, ``dmoerm_trl/commands/help/<command>.txt``, without
importing TRL; ``dmoerm train --help-all`` builds the ``TrlParser`` and lists every flag. The texts are rendered
from the live dataclasses by :func:`render_own_help`; ``tests/test_cli_help.py`` checks that they are up to date, and
after changing a field or a command's description they are rewritten with::

    python -m dmoerm_trl.commands._help

Example:
    >>> from dmoerm_trl.commands._help import stored_help
    >>> stored_help("dmoerm train").splitlines()[0]
    'usage: dmoerm train [-h] [--help-all] [--config FILE] [--flag VALUE ...]'
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

HELP_DIR = Path(__file__).with_name("help")
WIDTH = 78  # argparse's width on an 80-column terminal (and in a pipe); fixed so that the stored text is stable
HELP_FLAGS = ("-h", "--help")
HELP_ALL = "--help-all"


def help_path(prog: str) -> Path:
    """The stored help of ``prog`` (``"dmoerm train"`` -> ``help/train.txt``)."""
    return HELP_DIR / f"{prog.split()[-1]}.txt"


def stored_help(prog: str) -> str | None:
    """The checked-in help text of ``prog``, or None if there is none (then the full help is the help)."""
    path = help_path(prog)
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _ours(cls: type) -> bool:
    return cls.__module__.startswith("dmoerm_trl.")


def own_field_names(dataclass_type: type) -> set[str]:
    """The fields that ``dmoerm_trl`` classes declare in ``dataclass_type`` (its own and re-declared ones), not the
    ones it inherits from TRL/transformers."""
    return {name for cls in dataclass_type.__mro__ if _ours(cls) for name in inspect.get_annotations(cls)}


def foreign_config_names(dataclass_types) -> list[str]:
    """``"TRL's RewardConfig"`` for each dataclass that is or extends a class of another library."""
    names = []
    for dataclass_type in dataclass_types:
        foreign = next(
            (c for c in dataclass_type.__mro__ if "__dataclass_fields__" in c.__dict__ and not _ours(c)),
            None,
        )
        if foreign is not None:
            names.append(f"{foreign.__module__.split('.')[0].upper()}'s {foreign.__name__}")
    return names


def render_own_help(command) -> str:
    """The short help of a :class:`~dmoerm_trl.commands._trl_command.TrlCommand`: its own flags, rendered by the same
    ``TrlParser`` (and formatter) as the full help, at a fixed width."""
    from ._errors import OneSpellingDefaultsHelpFormatter

    types = tuple(command.dataclasses())
    own = set().union(*(own_field_names(t) for t in types))
    full = command.build_parser()
    foreign = foreign_config_names(types)
    if foreign:
        epilog = (
            f"Every other flag of {' and '.join(foreign)} is taken too (learning rate, batch size, precision, "
            f"logging, saving ...); `{command.prog} {HELP_ALL}` lists them all."
        )
        help_all = "list every flag, TRL's too, and exit"
    else:
        epilog, help_all = None, "list the same flags from the live TrlParser and exit"
    parser = argparse.ArgumentParser(
        prog=command.prog,
        usage=f"%(prog)s [-h] [{HELP_ALL}] [--config FILE] [--flag VALUE ...]",
        description=command.description,
        epilog=epilog,
        formatter_class=lambda prog: OneSpellingDefaultsHelpFormatter(prog, width=WIDTH),
    )
    parser.add_argument(HELP_ALL, action="store_true", default=argparse.SUPPRESS, help=help_all)
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML file whose keys are the flags without their --; flags on the command line override it",
    )
    for action in full._actions:
        if action.dest in own:
            parser._add_action(action)
    return parser.format_help()


def write_all() -> list[Path]:
    """Rewrite ``help/<command>.txt`` for every ``TrlParser`` command from the live dataclasses."""
    import importlib

    from ..cli import SUBCOMMANDS
    from ..utils.io import atomic_write_text
    from ._trl_command import TrlCommand

    written = []
    for module_name, _ in SUBCOMMANDS.values():
        command = getattr(importlib.import_module(module_name), "COMMAND", None)
        if isinstance(command, TrlCommand):
            path = help_path(command.prog)
            path.parent.mkdir(exist_ok=True)
            atomic_write_text(path, render_own_help(command))
            written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all():
        print(f"wrote {written_path}")
