"""Quick mode of examples/dp_mnist.py and its Opacus control examples/dp_mnist_opacus.py.

Each script runs one epoch on a slice of MNIST (4 Poisson batches, a few
seconds); a second run from the same seed must repeat the first exactly, and
another seed must not. The control must start from fdl's weights (the two
networks give the same logits) and its Opacus RDP ε must equal fdl's for the
same ``(q, σ, steps)``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

import fdl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICK = ["--epochs", "1", "--limit", "128", "--batch-size", "32", "--test-limit", "200"]
needs_mnist = pytest.mark.skipif(not os.environ.get("FDL_DATA_DIR"), reason="FDL_DATA_DIR is unset")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cached(load_data: Callable[[Namespace], tuple]) -> Callable[[Namespace], tuple]:
    """``load_data`` reading MNIST once per slice (the runs here differ in seed only)."""
    cache: dict[tuple, tuple] = {}

    def load(args: Namespace) -> tuple:
        slice_ = (args.data_dir, args.limit, args.test_limit)
        if slice_ not in cache:
            cache[slice_] = load_data(args)
        return cache[slice_]

    return load


@pytest.fixture(scope="module")
def dp_mnist() -> ModuleType:
    module = _load("dp_mnist")
    module.load_data = _cached(module.load_data)
    return module


@pytest.fixture(scope="module")
def dp_mnist_opacus() -> ModuleType:
    pytest.importorskip("opacus")
    module = _load("dp_mnist_opacus")
    module.dp_mnist.load_data = _cached(module.dp_mnist.load_data)
    return module


@pytest.fixture(scope="module")
def quick_runs() -> dict[str, list]:
    """Per script, the quick-mode histories for seeds 0, 0, 1 (filled on first use)."""
    return {}


def _runs(example: ModuleType, cache: dict[str, list], out: Path) -> list[list[dict]]:
    if example.__name__ not in cache:
        cache[example.__name__] = [
            example.main([*QUICK, "--seed", seed, "--out", str(out / f"{i}.json")])
            for i, seed in enumerate(["0", "0", "1"])
        ]
    return cache[example.__name__]


def _without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_paper_preset_sets_the_defaults_and_explicit_flags_win(dp_mnist: ModuleType) -> None:
    plain = vars(dp_mnist.parse_args([]))
    paper = vars(dp_mnist.parse_args(["--paper"]))
    assert {k: paper[k] for k in dp_mnist.PAPER} == dp_mnist.PAPER
    assert paper != {**plain, "paper": True}  # the preset changes something
    assert dp_mnist.parse_args(["--paper", "--lr", "0.08"]).lr == 0.08
    assert dp_mnist.parse_args(["--lr", "0.08", "--paper"]).lr == 0.08


@needs_mnist
@pytest.mark.parametrize("script", ["dp_mnist", "dp_mnist_opacus"])
def test_quick_mode_is_deterministic_from_the_seed(
    script: str, request: pytest.FixtureRequest, quick_runs: dict, tmp_path: Path
) -> None:
    example = request.getfixturevalue(script)
    first, again, other = (_without_time(h) for h in _runs(example, quick_runs, tmp_path))
    assert len(first) == 1 and first[0]["steps"] == 4
    assert 0.0 <= first[0]["test_accuracy"] <= 100.0
    assert first == again
    assert first[0]["train_loss"] != other[0]["train_loss"]
    saved = json.loads((tmp_path / "0.json").read_text())
    assert _without_time(saved["history"]) == first


@needs_mnist
def test_the_control_reports_fdl_and_opacus_epsilon_for_the_same_triple(
    dp_mnist_opacus: ModuleType, quick_runs: dict, tmp_path: Path
) -> None:
    (row,) = _runs(dp_mnist_opacus, quick_runs, tmp_path)[0]
    q, steps = 32 / 128, 4
    assert row["fdl_sample_rate"] == q and row["fdl_steps"] == steps
    assert row["fdl_rdp"] == fdl.privacy.epsilon(steps, 1.0, q, 1e-5)
    assert row["opacus_rdp"] == pytest.approx(row["fdl_rdp"], rel=1e-6)
    assert row["sample_rate"] == q  # 128 / 32 has no fractional part: Opacus's q is fdl's


def test_the_control_starts_from_fdls_weights(
    dp_mnist: ModuleType, dp_mnist_opacus: ModuleType
) -> None:
    model = dp_mnist.make_model()
    _, params = dp_mnist.init_params(model, 3)
    module = dp_mnist_opacus.initial_model(3)
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(module(x), model.apply(params, x), rtol=1e-5, atol=1e-5)
    other = dp_mnist_opacus.initial_model(4)
    assert not torch.equal(other.conv1.weight, module.conv1.weight)


@needs_mnist
@pytest.mark.parametrize("script", ["dp_mnist", "dp_mnist_opacus"])
def test_cosine_lr_decay_changes_the_run_and_only_after_the_first_step(
    script: str, request: pytest.FixtureRequest, quick_runs: dict, tmp_path: Path
) -> None:
    example = request.getfixturevalue(script)
    (constant,) = _without_time(_runs(example, quick_runs, tmp_path)[0])
    decayed = example.main([*QUICK, "--lr-decay", "cosine", "--out", str(tmp_path / "cos.json")])
    (cosine,) = _without_time(decayed)
    # the same batches and noise; the smaller later rates give other weights
    assert cosine["steps"] == constant["steps"]
    assert cosine["train_loss"] != constant["train_loss"]
    assert json.loads((tmp_path / "cos.json").read_text())["args"]["lr_decay"] == "cosine"
