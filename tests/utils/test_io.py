"""The one atomic-write helper: all or nothing on failure and on kill -9, permissions from the umask, folders too."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dmoerm_trl.utils.io import (
    apply_umask,
    atomic_path,
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    replace_path,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_files_and_folders_get_the_umask_permissions(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "README.md", "# card\n")
    atomic_write_json(tmp_path / "config.json", {"a": 1})
    atomic_write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
    atomic_save_safetensors({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")
    with atomic_path(tmp_path / "adapters" / "expert", directory=True) as folder:
        (folder / "adapter_config.json").write_text("{}")
    for name in (
        "README.md",
        "config.json",
        "rows.jsonl",
        "weights.safetensors",
        "adapters/expert/adapter_config.json",
    ):
        assert mode(tmp_path / name) == 0o666 & ~mask, name
    for name in ("adapters", "adapters/expert"):  # the created parent and the renamed folder
        assert mode(tmp_path / name) == 0o777 & ~mask, name


def test_a_saved_model_folder_follows_the_umask(tmp_path, umask, tiny_llama_path, tiny_tokenizer, tiny_categories):
    from dmoerm_trl import DMoERMForSequenceClassification

    model = DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, tokenizer=tiny_tokenizer)
    umask(0o022)
    model.save_pretrained(tmp_path / "model", save_base=True)
    entries = list((tmp_path / "model").rglob("*"))
    assert any(p.name == "dmoerm_heads.safetensors" for p in entries)
    assert any(p.name == "adapter_model.safetensors" for p in entries)
    wrong = {
        str(p.relative_to(tmp_path)): oct(mode(p)) for p in entries if mode(p) != (0o755 if p.is_dir() else 0o644)
    }
    assert wrong == {}


def test_failure_inside_the_block_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text('{"version": 2, "trunc')
        raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"version": 1}
    assert leftovers(tmp_path) == []


def test_a_failing_writer_keeps_the_old_safetensors_file(tmp_path):
    target = tmp_path / "final.safetensors"
    atomic_save_safetensors({"w": torch.ones(3)}, target, {"dmoerm_stage": "router"})
    with pytest.raises(TypeError):  # raised inside safetensors' writer, after the temporary file exists
        atomic_save_safetensors({"w": torch.zeros(3)}, target, {"step": 5})
    assert torch.equal(load_file(target)["w"], torch.ones(3))
    with safe_open(target, "pt") as handle:
        assert handle.metadata() == {"format": "pt", "dmoerm_stage": "router"}
    assert leftovers(tmp_path) == []


def test_jsonl_rows_from_a_failing_generator_are_not_half_written(tmp_path):
    target = tmp_path / "labels.jsonl"
    assert atomic_write_jsonl(target, [{"i": 0}, {"i": 1}]) == 2

    def rows():
        yield {"i": 10}
        raise ValueError("bad row")

    with pytest.raises(ValueError):
        atomic_write_jsonl(target, rows())
    assert [json.loads(line) for line in target.read_text().splitlines()] == [{"i": 0}, {"i": 1}]
    assert leftovers(tmp_path) == []


def test_kill_9_during_a_write_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old complete file")
    script = textwrap.dedent(
        f"""
        import sys, time
        from dmoerm_trl.utils.io import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"x" * 100000)
                handle.flush()
                print("writing", flush=True)
                time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert target.read_bytes() == b"old complete file"
    stale = leftovers(tmp_path)  # a crash can leave only a hidden temporary, never a partial target
    assert len(stale) == 1 and stale[0].startswith(".model.safetensors.") and stale[0].endswith(".tmp")


def test_a_folder_replaces_the_old_folder_whole(tmp_path):
    target = tmp_path / "backbone"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_path(target, directory=True) as folder:
        assert not target.joinpath("new.txt").exists() and target.joinpath("old.txt").exists()
        (folder / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert leftovers(tmp_path) == []


def test_a_failing_folder_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "backbone"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target, directory=True) as folder:
        (folder / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert leftovers(tmp_path) == []


def test_replace_path_moves_files_and_folders_onto_existing_ones(tmp_path):
    (tmp_path / "new.json").write_text("new")
    (tmp_path / "config.json").write_text("old")
    replace_path(tmp_path / "new.json", tmp_path / "config.json")
    assert (tmp_path / "config.json").read_text() == "new" and not (tmp_path / "new.json").exists()
    (tmp_path / "staged").mkdir()
    (tmp_path / "staged" / "a").write_text("a")
    replace_path(tmp_path / "staged", tmp_path / "fresh")  # no old folder
    assert (tmp_path / "fresh" / "a").read_text() == "a"


def test_suffix_keeps_the_extension_for_writers_that_read_it(tmp_path):
    with atomic_path(tmp_path / "plot.png", suffix=".tmp.png") as tmp:
        assert tmp.name.startswith(".plot.png.") and tmp.suffix == ".png"
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"


def test_views_and_shared_storage_are_saved_as_separate_tensors(tmp_path):
    weight = torch.arange(12.0).reshape(3, 4)
    tensors = {"full": weight, "row": weight[1], "same": weight, "column": weight[:, 0]}
    atomic_save_safetensors(tensors, tmp_path / "t.safetensors")
    loaded = load_file(tmp_path / "t.safetensors")
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name
    assert weight.data_ptr() == tensors["full"].data_ptr()  # the caller's tensors are not touched


def test_apply_umask_fixes_a_folder_or_only_the_matching_files(tmp_path, umask):
    umask(0o022)
    folder = tmp_path / "policy"
    (folder / "sub").mkdir(parents=True)
    for name in ("model.safetensors", "private.txt", "sub/weights.bin"):
        os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o600))
    apply_umask(folder, "*.safetensors")  # the user's other files keep their permissions
    assert mode(folder / "model.safetensors") == 0o644 and mode(folder / "private.txt") == 0o600
    assert mode(folder / "sub" / "weights.bin") == 0o600
    umask(0o027)
    apply_umask(folder)
    assert {mode(p) for p in folder.rglob("*") if p.is_file()} == {0o640}
    assert mode(folder) == mode(folder / "sub") == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]  # no probe left behind
