"""Quick mode of examples/dp_text.py (DP-SGD on standard-library source lines).

One epoch on 256 train lines (4 Poisson batches, seconds). A second run from
the same seed must repeat the first exactly and another seed must not; ε must
stay within the target; ``--non-private`` must run the same batches with no
noise; the data must be balanced and split by file.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

import fdl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICK = ["--epochs", "1", "--limit", "256", "--batch-size", "64", "--test-limit", "200"]


@pytest.fixture(scope="module")
def dp_text() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_example_dp_text", EXAMPLES / "dp_text.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(dp_text: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """Quick-mode histories: seeds 0, 0, 1 with DP, seed 0 without (and the first JSON)."""
    out = tmp_path_factory.mktemp("dp_text")
    named = {"dp0": ["--seed", "0"], "again": ["--seed", "0"], "dp1": ["--seed", "1"]}
    named["plain"] = ["--seed", "0", "--non-private"]
    got = {k: dp_text.main([*QUICK, *v, "--out", str(out / f"{k}.json")]) for k, v in named.items()}
    got["saved"] = json.loads((out / "dp0.json").read_text())["history"]
    return got


def _without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_quick_mode_is_deterministic_from_the_seed(runs: dict) -> None:
    first, again, other = (_without_time(runs[k]) for k in ("dp0", "again", "dp1"))
    assert len(first) == 1 and first[0]["steps"] == 4
    assert 0.0 <= first[0]["test_accuracy"] <= 100.0
    assert first == again
    assert first[0]["train_loss"] != other[0]["train_loss"]
    assert _without_time(runs["saved"]) == first


def test_epsilon_is_within_the_target_and_matches_the_accountant(runs: dict) -> None:
    (row,) = runs["dp0"]
    q = 64 / 256
    assert row["noise_multiplier"] > 0.0
    assert row["epsilon"] <= 8.0
    assert row["epsilon"] == fdl.privacy.epsilon(4, row["noise_multiplier"], q, 1e-5)
    # the smallest σ for the budget: a little less noise would overspend it
    assert fdl.privacy.epsilon(4, 0.99 * row["noise_multiplier"], q, 1e-5) > 8.0


def test_non_private_runs_the_same_steps_without_noise(runs: dict) -> None:
    (dp,), (plain,) = runs["dp0"], runs["plain"]
    assert plain["noise_multiplier"] == 0.0 and plain["epsilon"] is None
    assert plain["steps"] == dp["steps"]
    assert plain["train_loss"] != dp["train_loss"]


def test_the_data_is_balanced_and_split_by_file(dp_text: ModuleType) -> None:
    for package in dp_text.PACKAGES:
        files = dp_text._split_files(package)
        assert files["test"] and not set(files["train"]) & set(files["test"])
    data = dp_text.load_data(limit=400, test_limit=80)
    (x, y), (x_test, y_test) = data["train"], data["test"]
    assert x.shape == (400, 64) and x_test.shape == (80, 64)
    k = len(dp_text.PACKAGES)
    assert torch.equal(y.bincount(), torch.full((k,), 100))
    assert torch.equal(y_test.bincount(), torch.full((k,), 20))
    assert bool((x[:, 0] != 0).all())  # no empty line
    assert bool((x[:, : dp_text.MIN_CHARS] != 0).all())  # at least MIN_CHARS characters
