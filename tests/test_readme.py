"""The README's commands and its tour run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def test_readme_names_the_main_commands() -> None:
    text = README.read_text()
    assert "pip install -e . && python examples/mnist_cnn.py" in text
    test_command = "python -m pytest -n auto --maxprocesses 4 --dist loadfile"
    assert f'pip install -e ".[dev]" && {test_command}' in text
    assert (README.parent / "examples" / "mnist_cnn.py").is_file()


def test_tour_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section("Tour"), re.S)
    assert len(blocks) == 1, "the tour is one python block"
    code = blocks[0]
    assert 20 <= len(code.splitlines()) <= 45
    exec(compile(code, str(README) + ":Tour", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("loss after 10 steps: ")
    assert out[1] == "torch.Size([64, 64, 784])"
    assert out[2] == "['0.bias', '0.weight', '2.bias', '2.weight']"
