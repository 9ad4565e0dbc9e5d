"""Checks of user-given paths that fail with one clear line naming the option and the fix (see
``dmoerm_trl/commands/_errors.py`` for how the CLI prints them).

Example:
    >>> from dmoerm_trl.paths import looks_local
    >>> looks_local("./runs/dmoerm"), looks_local("HuggingFaceTB/SmolLM2-135M-Instruct")
    (True, False)
"""

from __future__ import annotations

import os
from pathlib import Path


def require_input_file(path: str, flag: str) -> Path:
    """``path`` as a ``Path`` if it is a readable file, else a ``FileNotFoundError`` naming ``flag``."""
    file = Path(path)
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "does not exist"
        raise FileNotFoundError(f"{flag} {path} {what}")
    return file


def require_output_dir(path: str, flag: str) -> Path:
    """``path`` as a ``Path`` if it is a folder or can become one, else a ``ValueError`` naming ``flag``."""
    folder = Path(path)
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, not a folder; pass a folder path")
            break
    return folder


def looks_local(path: str) -> bool:
    """Whether ``path`` is meant as a local path rather than a hub id (``org/name``)."""
    return (
        os.path.isabs(path)
        or path.startswith((".", "~"))
        or path.count("/") > 1
        or os.sep != "/"
        and os.sep in path
        or os.path.exists(path)
    )


def require_model(path: str, flag: str) -> str:
    """``path`` unchanged if it is an existing folder or a hub id, else a ``FileNotFoundError`` naming ``flag``."""
    if looks_local(path) and not os.path.isdir(path):
        what = "is a file, not a model folder" if os.path.exists(path) else "does not exist"
        raise FileNotFoundError(f"{flag} {path} {what}; pass a folder written by save_pretrained (or a hub id)")
    return path


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its class name when it has none), for one-line user errors.

    Example:
        >>> first_line(OSError("no such model\\nmore detail")), first_line(KeyError())
        ('no such model', 'KeyError')
    """
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def unloadable_model(flag: str, path: str, error: Exception) -> ValueError:
    """The one-line error for a ``flag`` value that passed :func:`require_model` (a folder or a hub id) and still
    could not be loaded, e.g. a hub id that does not exist or is not in the cache while offline.

    Example:
        >>> str(unloadable_model("--model", "org/typo", OSError("org/typo is not a valid model identifier\\nmore")))
        '--model org/typo: cannot be loaded (org/typo is not a valid model identifier); pass a folder written by save_pretrained, or a hub id that exists (with HF_HUB_OFFLINE=1: one already in the local cache)'
    """
    return ValueError(
        f"{flag} {path}: cannot be loaded ({first_line(error)}); pass a folder written by save_pretrained, or a hub id that "
        "exists (with HF_HUB_OFFLINE=1: one already in the local cache)"
    )


def read_yaml_file(path: str | os.PathLike, error: type[Exception] = ValueError):
    """The YAML (or JSON) document in the file ``path``; a file that is not valid YAML or not UTF-8 text raises
    ``error`` (a ``ValueError`` subclass of the caller's choosing) naming the file and the fix, in one line.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        ...     _ = f.write("a: [1, 2\\n")
        >>> read_yaml_file(f.name)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: ...yaml: not valid YAML (while parsing a flow sequence). Fix the YAML syntax.
    """
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid YAML ({first_line(err)}). Fix the YAML syntax.") from None
