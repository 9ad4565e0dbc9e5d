"""Crash-safe file and folder writes: the one helper every part of the package uses.

A file (or folder) is written under a temporary name next to its target, flushed to disk, and renamed over the
target with ``os.replace``: a reader sees the old version or the new one, never half of one, and a crash (even
``kill -9``) leaves at most a stale hidden ``.<name>.<random>.tmp`` entry behind, never a truncated target. On an
exception the temporary entry is removed and the target is left as it was.

New files get the permissions any other program's files get, ``0o666`` minus the umask (folders ``0o777`` minus the
umask): the temporary name is created with ``os.open(..., 0o666)`` / ``os.mkdir(..., 0o777)``, which the kernel
masks with the umask. (``tempfile.mkstemp``/``mkdtemp`` would make them ``0o600``/``0o700``, private to the user,
which breaks model folders shared with a group or served by another user.) A writer that replaces the temporary
file with its own (``safetensors.torch.save_file`` makes ``0o600`` files) is corrected before the rename, and a
folder's whole content gets the umask's permissions.

Example:
    >>> import os, tempfile
    >>> from dmoerm_trl.utils.io import atomic_path, atomic_write_json, atomic_write_text
    >>> folder = tempfile.mkdtemp()
    >>> atomic_write_text(os.path.join(folder, "notes.txt"), "hello\\n")
    >>> atomic_write_json(os.path.join(folder, "metrics.json"), {"accuracy": 0.75})
    >>> with atomic_path(os.path.join(folder, "table.csv")) as tmp:
    ...     with open(tmp, "w") as handle:
    ...         _ = handle.write("a,b\\n1,2\\n")
    >>> sorted(os.listdir(folder))
    ['metrics.json', 'notes.txt', 'table.csv']
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "apply_umask",
    "atomic_path",
    "atomic_save_safetensors",
    "atomic_write_json",
    "atomic_write_jsonl",
    "atomic_write_text",
    "replace_path",
]


def _reserve(path: Path, directory: bool, suffix: str) -> Path:
    """Create an unused hidden sibling of ``path`` (a file or a folder), with umask-respecting permissions."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}{suffix}")
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` to disk (best effort for folders: not every platform can open one)."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _set_modes(folder: Path, folder_mode: int) -> None:
    """Give ``folder`` and everything under it the permissions of new entries (folders: ``folder_mode``)."""
    file_mode = folder_mode & 0o666
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, folder_mode)
        for name in files:
            entry = os.path.join(root, name)
            if not os.path.islink(entry):
                executable = os.stat(entry).st_mode & stat.S_IXUSR
                os.chmod(entry, folder_mode if executable else file_mode)


def apply_umask(path: str | os.PathLike, pattern: str | None = None) -> None:
    """Give a file or folder (recursively) the permissions a new one gets under the current umask.

    For folders written by code that ignores the umask and cannot write through :func:`atomic_path`, e.g.
    ``safetensors.torch.save_file`` (always ``0o600``) inside ``save_pretrained`` called on every process. With
    ``pattern``, only the entries of the folder ``path`` that match it (``Path.glob``), e.g. ``"*.safetensors"`` for
    a folder that may also hold files of the user's.

    Example:
        >>> import os, stat, tempfile
        >>> from dmoerm_trl.utils.io import apply_umask
        >>> path = os.path.join(tempfile.mkdtemp(), "weights.bin")
        >>> os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        >>> old = os.umask(0o022); apply_umask(path); _ = os.umask(old)
        >>> oct(stat.S_IMODE(os.stat(path).st_mode))
        '0o644'
    """
    path = Path(path)
    probe = _reserve(path / "probe" if pattern else path, directory=True, suffix=".umask")
    try:
        folder_mode = stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.rmdir(probe)
    for entry in sorted(path.glob(pattern)) if pattern else [path]:
        if entry.is_dir():
            _set_modes(entry, folder_mode)
        elif not entry.is_symlink():
            os.chmod(entry, folder_mode if os.stat(entry).st_mode & stat.S_IXUSR else folder_mode & 0o666)


def replace_path(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move ``source`` (a file or a folder) onto ``target``, replacing what is there.

    A file is one ``os.replace``. A folder cannot be renamed over a non-empty folder, so the old ``target`` is
    first renamed aside (hidden, in the same parent), the new one renamed in, and the old one deleted: at every
    instant ``target`` is either complete old or complete new, except for the moment between the two renames.

    Example:
        >>> import os, tempfile
        >>> from dmoerm_trl.utils.io import replace_path
        >>> root = tempfile.mkdtemp()
        >>> os.mkdir(os.path.join(root, "new")); os.mkdir(os.path.join(root, "model"))
        >>> replace_path(os.path.join(root, "new"), os.path.join(root, "model"))
        >>> os.listdir(root)
        ['model']
    """
    source, target = Path(source), Path(target)
    if source.is_dir() and target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.{os.urandom(4).hex()}.old")
        os.rename(target, old)
        try:
            os.rename(source, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)
    _fsync(target.parent, directory=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, move it onto ``path``.

    Args:
        path: the file or folder to write. Its parent folders are created.
        directory: yield an (empty) folder instead of an (empty) file; on success it replaces ``path`` as a whole.
        suffix: the temporary name's ending; give one that ends like ``path`` (e.g. ``".tmp.png"``) for writers
            that pick the format from the file name, such as matplotlib's ``savefig``.

    On success a file is flushed to disk (``fsync``) before the rename; on any exception the temporary file or
    folder is deleted and ``path`` is untouched.

    Example:
        >>> import os, tempfile
        >>> from dmoerm_trl.utils.io import atomic_path
        >>> target = os.path.join(tempfile.mkdtemp(), "out", "model")
        >>> with atomic_path(target, directory=True) as tmp:
        ...     with open(tmp / "config.json", "w") as handle:
        ...         _ = handle.write("{}")
        >>> os.listdir(target)
        ['config.json']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve(path, directory, suffix)
    wanted = stat.S_IMODE(os.stat(tmp).st_mode)  # what the umask gives a new file / folder here
    try:
        yield tmp
        if directory:
            _set_modes(tmp, wanted)
        else:
            _fsync(tmp)
            if stat.S_IMODE(os.stat(tmp).st_mode) != wanted:  # a writer that replaced the file (safetensors: 0o600)
                os.chmod(tmp, wanted)
        replace_path(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically.

    Example:
        >>> import os, tempfile
        >>> from dmoerm_trl.utils.io import atomic_write_text
        >>> path = os.path.join(tempfile.mkdtemp(), "README.md")
        >>> atomic_write_text(path, "# model\\n")
        >>> open(path).read()
        '# model\\n'
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (UTF-8, non-serialisable values as ``str``) to ``path`` atomically.

    Example:
        >>> import json, os, tempfile
        >>> from dmoerm_trl.utils.io import atomic_write_json
        >>> path = os.path.join(tempfile.mkdtemp(), "state.json")
        >>> atomic_write_json(path, {"stages": {"router": "done"}})
        >>> json.load(open(path))["stages"]
        {'router': 'done'}
    """
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping]) -> int:
    """Write ``rows`` as JSON Lines to ``path`` atomically; return the number of rows.

    Example:
        >>> import os, tempfile
        >>> from dmoerm_trl.utils.io import atomic_write_jsonl
        >>> atomic_write_jsonl(os.path.join(tempfile.mkdtemp(), "pairs.jsonl"), [{"a": 1}, {"a": 2}])
        2
    """
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
            count += 1
    return count


def atomic_save_safetensors(tensors: Mapping[str, Any], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Save ``tensors`` (name -> torch tensor) as a safetensors file atomically, with ``{"format": "pt"}`` metadata.

    Tensors are moved to CPU and made contiguous; a tensor that shares its storage with another one, or is a view
    into a larger storage, is copied (safetensors refuses shared storage).

    Example:
        >>> import os, tempfile, torch
        >>> from safetensors.torch import load_file
        >>> from dmoerm_trl.utils.io import atomic_save_safetensors
        >>> path = os.path.join(tempfile.mkdtemp(), "heads.safetensors")
        >>> atomic_save_safetensors({"w": torch.ones(2, 3)}, path, {"dmoerm_stage": "router"})
        >>> load_file(path)["w"].shape
        torch.Size([2, 3])
    """
    from safetensors.torch import save_file

    plain, seen = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        plain[name] = tensor
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata={"format": "pt", **(metadata or {})})
