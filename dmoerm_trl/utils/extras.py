"""Optional dependencies behind extras: a clear one-line error naming the extra when one is missing.

Example:
    >>> from dmoerm_trl.utils.extras import require_openai
    >>> require_openai().__name__  # the labeling client; ``pip install "dmoerm-trl[label]"`` when missing
    'openai'
"""

from __future__ import annotations

import importlib


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed. A ``ValueError`` too, so ``dmoerm`` prints it as one line (exit 2)."""


def require_extra(module: str, extra: str, purpose: str):
    """Import ``module`` or raise :class:`MissingExtraError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f'{purpose} needs the `{module}` package, which is not installed: pip install "dmoerm-trl[{extra}]"',
            name=module,
        ) from err


def require_openai():
    """The ``openai`` module (LLM-judge labeling and categorisation: the ``[label]`` extra)."""
    return require_extra("openai", "label", "labeling with an LLM judge")
