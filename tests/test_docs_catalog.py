"""docs/catalog.md stays in step with torch.nn and fdl: every torch name listed, every
"done" row names an fdl object that exists and a test file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import torch.nn as nn

import fdl
import fdl.losses

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "catalog.md").read_text()
ROWS = [line for line in DOC.splitlines() if line.startswith("| `")]


def test_every_torch_module_is_listed():
    names = [
        n
        for n in dir(nn)
        if isinstance(getattr(nn, n), type)
        and issubclass(getattr(nn, n), nn.Module)
        and not n.startswith("_")
    ]
    missing = [n for n in names if f"`{n}`" not in DOC and f"`nn.{n}`" not in DOC]
    assert not missing, f"torch.nn names missing from docs/catalog.md: {missing}"


def test_done_rows_name_existing_objects_and_tests():
    for row in ROWS:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if not cells[2].startswith("done"):
            continue
        for ref in re.findall(r"`fdl\.(nn|losses)\.(\w+)`", cells[1]):
            module = fdl.nn if ref[0] == "nn" else fdl.losses
            assert hasattr(module, ref[1]), row
        for test in re.findall(r"`tests/(\w+\.py)`", row):
            assert (ROOT / "tests" / test).is_file(), row


def test_every_torch_optimizer_schedule_and_averaging_name_is_listed():
    import torch.optim as optim
    import torch.optim.lr_scheduler as lr_scheduler
    import torch.optim.swa_utils as swa_utils

    optimizers = [
        n
        for n in dir(optim)
        if isinstance(getattr(optim, n), type)
        and issubclass(getattr(optim, n), optim.Optimizer)
        and n != "Optimizer"
    ]
    schedules = [
        f"lr_scheduler.{n}"
        for n in dir(lr_scheduler)
        if not n.startswith("_")
        and isinstance(getattr(lr_scheduler, n), type)
        and (issubclass(getattr(lr_scheduler, n), lr_scheduler.LRScheduler) or n.endswith("LR"))
    ] + ["lr_scheduler.ReduceLROnPlateau"]
    averaging = [f"swa_utils.{n}" for n in swa_utils.__all__]
    missing = [n for n in optimizers + schedules + averaging if f"| `{n}` |" not in DOC]
    assert not missing, f"torch.optim names missing from docs/catalog.md: {missing}"


def test_done_optim_rows_name_existing_objects():
    for row in ROWS:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if not cells[2].startswith("done"):
            continue
        for dotted in re.findall(r"`fdl\.optim\.([\w.]+)`", cells[1]):
            obj = fdl.optim
            for part in dotted.split("."):
                obj = getattr(obj, part)
