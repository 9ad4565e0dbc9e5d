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
