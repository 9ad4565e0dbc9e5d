"""How every ``dmoerm`` subcommand reports a user mistake: one line on stderr, exit code 2, no traceback.

:func:`dmoerm_trl.cli.main` runs each subcommand through :func:`run_command`, which turns the exceptions in
:func:`user_errors` (bad files, values, flags, configs) into ``dmoerm <command>: error: <one line>``. The message is
the exception's own, which names the file, line, field or flag and the fix; code that finds a user mistake raises a
``ValueError`` (or ``FileNotFoundError``) with such a message and lets it travel up. Anything else is a bug and keeps
its traceback. ``DMOERM_TRACEBACK=1`` shows the traceback of user errors too (for bug reports).

Example:
    >>> from dmoerm_trl.commands._errors import one_line
    >>> one_line(FileNotFoundError(2, "No such file or directory", "data.jsonl"))
    'data.jsonl: No such file or directory'
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import textwrap

from ..paths import require_input_file, require_model, require_output_dir  # noqa: F401  (re-exported for commands)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or setup (one line, exit code 2), not a bug."""
    import yaml
    from safetensors import SafetensorError

    # ValueError covers DataValidationError, TrainingDataError, TemplateError, JSON and UnicodeDecodeError;
    # OSError covers missing/unreadable files, "is a directory", and transformers' "not a valid model identifier".
    errors = (ValueError, OSError, yaml.YAMLError, SafetensorError)
    ppo = sys.modules.get("dmoerm_trl.rl.ppo")  # only raised once loaded; importing dmoerm_trl.rl costs seconds
    return errors + ((ppo.PPOUnavailableError,) if ppo is not None else ())


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (file errors as ``path: reason``)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, UnicodeDecodeError):
        return (
            f"not UTF-8 text (byte {err.object[err.start : err.start + 1]!r} at offset {err.start}); save it as UTF-8"
        )
    text = " ".join(str(err).split()) or type(err).__name__
    try:
        import yaml

        if isinstance(err, yaml.YAMLError):
            return f"not valid YAML: {text}"
    except ImportError:  # pragma: no cover
        pass
    return text


def run_command(run, args: argparse.Namespace, prog: str) -> int:
    """``run(args)``; a user error becomes ``<prog>: error: <one line>`` on stderr and exit code 2."""
    try:
        return int(run(args) or 0)
    except user_errors() as err:
        if os.environ.get("DMOERM_TRACEBACK"):
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line_parser_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` (e.g. a ``TrlParser`` with hundreds of flags) report a bad flag in one line, exit code 2."""

    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {' '.join(message.split())} (see {parser.prog} --help)\n")

    parser.error = error
    return parser


def both_spellings(option_strings) -> list[str]:
    """``--max_length`` and ``--max-length`` for either: every ``dmoerm`` flag takes both spellings, like TRL's.

    >>> both_spellings(["--batch-size", "-b"])
    ['--batch_size', '--batch-size', '-b']
    """
    spelled: list[str] = []
    for option in option_strings:
        if option.startswith("--") and ("-" in option[2:] or "_" in option[2:]):
            variants = ["--" + option[2:].replace("-", "_"), "--" + option[2:].replace("_", "-")]
        else:
            variants = [option]
        spelled += [variant for variant in variants if variant not in spelled]
    return spelled


class OneSpellingHelpFormatter(argparse.HelpFormatter):
    """Help that shows one spelling per flag (the first, ``--max_length``), not its ``--max-length`` twin, and never
    breaks a line inside a hyphenated word (``--help-all``, ``held-out``)."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        return textwrap.fill(
            " ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
        )

    def _format_action_invocation(self, action):
        if action.option_strings:
            seen, shown = set(), []
            for option in action.option_strings:
                key = option.replace("-", "_")
                if key not in seen:
                    seen.add(key)
                    shown.append(option)
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)


class OneSpellingDefaultsHelpFormatter(OneSpellingHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """:class:`OneSpellingHelpFormatter` plus each flag's default, once: not where the help text already says its
    default, nor for ``None`` (a required flag, or one whose help says what unset means)."""

    def _get_help_string(self, action):
        if isinstance(action, argparse._StoreFalseAction) and any(
            option.startswith(("--no_", "--no-")) for option in action.option_strings
        ):
            # TrlParser's --no_<flag> of a boolean whose default is true: it repeats the flag's help with
            # "(default: False)", which reads as if the flag were off by default
            return f"Set {action.dest} to false."
        text = action.help or ""
        if action.default is None or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class BothSpellingsBooleanAction(argparse.BooleanOptionalAction):
    """``--skip_invalid``/``--no_skip_invalid`` (and the ``-`` spellings); usage shows ``--x_y | --no_x_y``."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.option_strings = both_spellings(self.option_strings)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.option_strings:
            setattr(namespace, self.dest, not option_string.startswith(("--no-", "--no_")))

    def format_usage(self):
        return " | ".join(option for option in self.option_strings if "-" not in option[2:])


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block) and whose flags take both spellings
    (``--batch_size`` shown in help, ``--batch-size`` accepted too); subcommand parsers inherit it."""

    def __init__(self, *args, **kwargs):
        formatter = kwargs.get("formatter_class", OneSpellingHelpFormatter)
        if not issubclass(formatter, OneSpellingHelpFormatter):  # e.g. a command's RawDescriptionHelpFormatter
            formatter = type(f"OneSpelling{formatter.__name__}", (OneSpellingHelpFormatter, formatter), {})
        kwargs["formatter_class"] = formatter
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if args and all(isinstance(arg, str) and arg.startswith("-") for arg in args):
            args = tuple(both_spellings(args))
            if kwargs.get("action") is argparse.BooleanOptionalAction:
                kwargs["action"] = BothSpellingsBooleanAction
        return super().add_argument(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts that must be at least 1 (``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port_number(text: str) -> int:
    """argparse ``type=`` for a TCP port (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0: any free port), got {value}")
    return value
