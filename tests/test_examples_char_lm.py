"""Quick mode of examples/char_lm.py and examples/char_lm_torch.py (a few seconds each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fdl

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--limit", "3000", "--epochs", "1", "--steps", "2", "--batch-size", "4",
         "--seq-len", "16", "--hidden", "32", "--eval-windows", "4"]  # fmt: skip


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *QUICK, *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_quick_mode_fdl_and_torch(model: str, tmp_path: Path) -> None:
    out = _run("char_lm.py", "--model", model, "--no-compile", "--sample-chars", "8",
               "--out", str(tmp_path / "fdl"))  # fmt: skip
    assert "Epoch 1:" in out and "Test:" in out and "bits/char" in out and "Sample: 'def " in out
    saved = fdl.checkpoint.load(tmp_path / "fdl" / "checkpoint.safetensors")
    ref = _run("char_lm_torch.py", "--model", model, "--out", str(tmp_path / "torch"))
    assert "Test:" in ref
    torch_sd = torch.load(tmp_path / "torch" / "checkpoint.pt")
    fdl_sd = fdl.nn.state_dict(saved["params"])
    assert list(fdl_sd) == list(torch_sd)  # the two examples build the same parameters
    assert all(fdl_sd[k].shape == v.shape for k, v in torch_sd.items())
