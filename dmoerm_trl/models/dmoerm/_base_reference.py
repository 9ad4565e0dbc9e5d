"""Where a saved DMoERM finds its base model, written so that the folder can be moved or copied to another machine.

``config.json`` names the base in ``base_model_name_or_path`` (and ``base_model_revision``) as one of:

* a **hub id** (``"HuggingFaceTB/SmolLM2-135M-Instruct"``), with the commit when it is known: also when the base
  was loaded from a local Hugging Face cache snapshot (``.../models--org--name/snapshots/<commit>``), whose hub id
  and commit are read off the path. Works on any machine that can reach the Hub (or has it cached).
* a path **relative to the model folder**, starting with ``./`` (``"./backbone"``), when the base lies inside the
  folder: the folder can be moved or copied as a whole.
* an **absolute local path**, only when it is neither (a warning says so at save time): it loads on this machine
  only; ``save_pretrained(..., save_base=True)`` makes the folder self-contained.

A base saved with the model (``base/``, ``save_base=True``) is always used first. Folders saved before this
convention (absolute paths, no revision) still load where their base exists.

Example:
    >>> hub_id_from_cache_path("/root/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/abc123")
    ('HuggingFaceTB/SmolLM2-135M', 'abc123')
    >>> is_relative_reference("./backbone"), is_relative_reference("HuggingFaceTB/SmolLM2-135M")
    (True, False)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

SAVED_BASE_DIR = "base"


class MissingBaseModelError(FileNotFoundError):
    """The base model a saved DMoERM names cannot be found; the message names it and the fix."""


def hub_id_from_cache_path(path) -> tuple[str, str] | None:
    """``(repo_id, commit)`` when ``path`` is a snapshot folder of the Hugging Face hub cache, else ``None``.

    Example:
        >>> hub_id_from_cache_path("/tmp/my-model") is None
        True
    """
    parts = Path(path).parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    return parts[-3][len("models--") :].replace("--", "/"), parts[-1]


def pinned_revision(repo_id: str, revision: str | None = None, cache_dir=None) -> str | None:
    """The commit a hub id (at ``revision``, default main) resolved to in the local hub cache, or ``revision``.

    Stored with a model built on a hub id, so that a reader loads the base its adapters were trained on even if the
    base repo changes later.

    Example:
        >>> pinned_revision("no-such-org/no-such-model") is None
        True
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    except (ValueError, OSError):  # a malformed id or cache: nothing to pin, the id alone is kept
        return revision
    cached = hub_id_from_cache_path(Path(path).parent) if isinstance(path, str) else None
    return cached[1] if cached is not None else revision


def is_relative_reference(reference: str | None) -> bool:
    """True for a base named relative to the model folder (``./backbone``); hub ids never start with a dot."""
    return isinstance(reference, str) and reference.startswith(("./", ".\\"))


def _looks_local(reference: str) -> bool:
    return reference.startswith(("/", "~", ".")) or os.path.isabs(reference) or reference.count("/") > 1


def reference_for_save(
    base: str | None, revision: str | None, final_folder, warn: bool = True
) -> tuple[str | None, str | None]:
    """The ``(base_model_name_or_path, base_model_revision)`` to write into a folder saved at ``final_folder``.

    Example:
        >>> reference_for_save("HuggingFaceTB/SmolLM2-135M", None, "/tmp/run")
        ('HuggingFaceTB/SmolLM2-135M', None)
    """
    if not base or (not os.path.exists(os.path.expanduser(base)) and not _looks_local(base)):
        return base, revision  # a hub id (or nothing)
    if is_relative_reference(base):
        return base, revision  # already relative to this model's folder (a loaded folder saved again in place)
    local = Path(base).expanduser().resolve()
    cached = hub_id_from_cache_path(local)
    if cached is not None:
        return cached
    folder = Path(final_folder).resolve()
    if local == folder or folder in local.parents:
        return "./" + local.relative_to(folder).as_posix(), None
    if warn:
        logger.warning(
            "the base model %s is a local folder outside the saved model: the folder loads on this machine only. "
            "Save with save_base=True (or build the model from a hub id) to make it portable",
            local,
        )
    return str(local), None


def reference_for_reader(base: str | None) -> str | None:
    """The hub id a reader of an uploaded model downloads the base from, or ``None`` when the base is local."""
    if base and hub_id_from_cache_path(base) is not None:
        return hub_id_from_cache_path(base)[0]  # a hub cache snapshot (folders saved before hub ids were stored)
    if not base or is_relative_reference(base) or _looks_local(base) or os.path.exists(os.path.expanduser(base)):
        return None
    return base


def resolve_base(folder: Path, config, override: str | None) -> tuple[str, str | None]:
    """``(what to load the base from, revision)`` for a saved folder; a clear error when the base is missing."""
    if override is not None:
        return str(override), None
    if (folder / SAVED_BASE_DIR / "config.json").is_file():
        return str(folder / SAVED_BASE_DIR), None
    reference = config.base_model_name_or_path
    revision = getattr(config, "base_model_revision", None)
    fix = (
        "Fix: put the base model there, or pass base_model_name_or_path=<hub id or folder of the base> to "
        "from_pretrained, or save the model with save_pretrained(..., save_base=True) to keep the base inside it"
    )
    if not reference:
        raise MissingBaseModelError(f"{folder}: config.json names no base model and there is no base/ folder. {fix}")
    if is_relative_reference(reference):
        local = (folder / reference).resolve()
        if not (local / "config.json").is_file():
            raise MissingBaseModelError(
                f"{folder}: the base model {reference!r} (saved inside the model folder) is missing: {local} has no "
                f"config.json; was the folder copied without it? {fix}"
            )
        return str(local), None
    if _looks_local(reference) or os.path.exists(os.path.expanduser(reference)):
        cached = hub_id_from_cache_path(reference)
        if cached is not None and not Path(reference).is_dir():
            return cached  # an older folder's path into another machine's hub cache: the same commit by hub id
        if not (Path(reference).expanduser() / "config.json").is_file():
            nearby = folder / Path(reference).name
            hint = (
                f" (a folder {nearby} exists: pass base_model_name_or_path={str(nearby)!r})"
                if (nearby / "config.json").is_file()
                else ""
            )
            raise MissingBaseModelError(
                f"{folder}: the base model {reference} does not exist on this machine (the model was saved with an "
                f"absolute local path to its base){hint}. {fix}"
            )
        return reference, None
    return reference, revision
