"""The examples survive a plain install: no matplotlib needed, and nothing trained is lost.

``examples/mnist_cnn.py`` runs on a small slice (one epoch, eager); the other
examples' plot helpers are checked without matplotlib. ``.ci/run`` runs every
example end to end in a clean virtual environment holding only fdl's declared
dependencies.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import fdl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICK = ["--epochs", "1", "--limit", "256", "--test-limit", "500", "--no-compile", "--no-progress"]
needs_mnist = pytest.mark.skipif(
    not os.environ.get("FDL_DATA_DIR"), reason="FDL_DATA_DIR is unset and ../shared/data missing"
)


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import matplotlib`` raises ImportError, as on an install without the plot extra."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@needs_mnist
def test_mnist_cnn_keeps_its_checkpoint_when_a_later_step_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = _load("mnist_cnn")

    def broken_plot(*args: object) -> bool:
        raise RuntimeError("the plot step failed")

    monkeypatch.setattr(example, "save_curve", broken_plot)
    with pytest.raises(RuntimeError, match="the plot step failed"):
        example.main([*QUICK, "--out", str(tmp_path)])
    saved = fdl.checkpoint.load(tmp_path / "checkpoint.safetensors")
    assert int(saved["epoch"]) == 1
    assert set(saved["params"]) == {"conv1", "conv2", "fc1", "fc2"}
    assert saved["params"]["fc2"]["weight"].shape == (10, 128)
    assert (tmp_path / "history.json").is_file()


@needs_mnist
def test_mnist_cnn_runs_to_the_end_without_matplotlib(
    tmp_path: Path, no_matplotlib: None, capsys: pytest.CaptureFixture[str]
) -> None:
    result = _load("mnist_cnn").main([*QUICK, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert (
        'skipped the training curve: matplotlib is not installed (pip install "fdl[plot]")' in out
    )
    assert "Accuracy of the network on the 500 test images" in out
    assert result["checkpoint"].is_file() and not (tmp_path / "training_curve.png").exists()


@pytest.mark.parametrize("name", ["mnist_cnn", "kfold_mnist", "per_sample_grads"])
def test_plots_are_skipped_with_a_notice_naming_the_extra(
    name: str, no_matplotlib: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _load(name).pyplot("the plot") is None
    assert capsys.readouterr().out == (
        'skipped the plot: matplotlib is not installed (pip install "fdl[plot]")\n'
    )


def test_kfold_confusion_png_is_skipped_without_matplotlib(
    tmp_path: Path, no_matplotlib: None
) -> None:
    png = tmp_path / "cm.png"
    assert not _load("kfold_mnist").save_confusion_png(torch.eye(10, dtype=torch.long), png, "t")
    assert not png.exists()
