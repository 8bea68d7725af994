"""Run the ```python blocks of a page under docs/, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1] / "docs"


def run_python_blocks(page: str) -> dict[str, Any]:
    """Execute every ```python block of ``docs/<page>``; return the shared namespace."""
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"docs/{page} has no python block"
    namespace: dict[str, Any] = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/{page} block {i}", "exec"), namespace)
    return namespace
