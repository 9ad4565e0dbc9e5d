"""The README's Python examples run as written (on the real offline SmolLM2-135M-Instruct)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks(tag: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"<!-- readme-test: {tag} -->\s*```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_has_the_two_commands_first():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.DOTALL).group(1)
    assert "scripts/demo.sh" in first_block and "scripts/test.sh" in first_block


@pytest.mark.slow
def test_usage_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gguf", reason="needs the `gguf` package (dev extra) to read the offline SmolLM2 copy")
    blocks = readme_blocks("usage")
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md:usage", "exec"), {"__name__": "readme"})  # noqa: S102 (runs the README snippet)
    printed = capsys.readouterr().out
    assert "torch.Size([1, 1])" in printed
    assert (tmp_path / "outputs" / "readme-dmoerm" / "adapters" / "chitchat__engagement").is_dir()
    # The folder is usable as the RL snippets' reward_path: AutoTokenizer.from_pretrained(reward_path) loads.
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "outputs" / "readme-dmoerm").chat_template
