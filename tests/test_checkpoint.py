"""Tests for fdl.checkpoint: round trips, atomic writes, damaged files, exact resume."""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
import safetensors.torch
import torch
from _doc_examples import run_python_blocks

import fdl
from fdl import checkpoint as C
from fdl.testing import assert_trees_close


class TrainState(NamedTuple):
    step: torch.Tensor
    mu: dict
    note: Any


def _exact_same(a: Any, b: Any) -> None:
    """Same containers (types, key order), same leaf types, bitwise-equal tensors."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()))
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _exact_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _exact_same(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN


def _g(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# Trees that must round-trip exactly (name -> tree).
TREES: dict[str, Any] = {
    "natural_call": {
        "params": {"fc1": {"weight": _g(4, 3), "bias": _g(4, seed=1)}},
        "opt_state": TrainState(torch.tensor(7), {"fc1": {"weight": _g(4, 3, seed=2)}}, None),
        "step": 12,
        "key": fdl.random.key(3),
    },
    "scalars": {"i": -(2**70), "f": 0.1, "inf": float("inf"), "b": True, "s": "adam", "n": None},
    "key_order_kept": {"weight": _g(2), "bias": _g(1), "a": 1},
    "ordered_dict": OrderedDict(z=_g(2), a=[_g(1), (3, 4.5)]),
    "int_keys": {0: _g(2), 10: {2: _g(1)}},
    "containers": [(), [], {}, None, ([_g(1)],)],
    "dtypes": {
        str(d): torch.arange(6).reshape(2, 3).to(d)
        for d in (
            torch.float16,
            torch.bfloat16,
            torch.float64,
            torch.int8,
            torch.int32,
            torch.int64,
            torch.uint8,
            torch.bool,
        )
    },
    "zero_dim_and_empty": {"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)},
    "dotted_keys": {"a.b": _g(1), "a": {"b": _g(2)}},
    "bare_tensor": _g(3),
    "bare_int": 5,
}
NAMES = sorted(TREES)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "ckpt.safetensors"


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_exact(path, name):
    C.save(path, TREES[name])
    _exact_same(C.load(path), TREES[name])


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_with_like(path, name):
    C.save(path, TREES[name])
    _exact_same(C.load(path, like=TREES[name]), TREES[name])


@pytest.mark.parametrize("name", NAMES)
def test_save_is_pure_and_file_is_plain_safetensors(path, name):
    tree = TREES[name]
    before = fdl.tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree)
    C.save(path, tree)
    _exact_same(tree, before)
    # any safetensors reader sees the tensors under their paths
    plain = safetensors.torch.load_file(path)
    ps, lvs, _ = fdl.tree.flatten_with_paths(tree)
    tensors = [
        (p or "<root>", x) for p, x in zip(ps, lvs, strict=True) if isinstance(x, torch.Tensor)
    ]
    assert len(plain) == len(tensors)
    for p, x in tensors:
        # a path repeated through a dotted dict key gets a "#n" suffix
        named = [v for k, v in plain.items() if k == p or k.startswith(p + "#")]
        assert any(v.shape == x.shape and torch.equal(v, x) for v in named)


def test_views_shared_tensors_and_grad_tensors(path):
    base = torch.arange(12.0).reshape(3, 4)
    w = torch.ones(3, requires_grad=True)
    tree = {"t": base.T, "row": base[1], "tied_a": base, "tied_b": base, "w": w * 2}
    C.save(path, tree)
    back = C.load(path)
    for k in tree:
        assert torch.equal(back[k], tree[k].detach())
        assert not back[k].requires_grad
    assert back["tied_a"].data_ptr() != back["tied_b"].data_ptr()


def test_metadata(path):
    C.save(path, {"w": _g(2)}, metadata={"epoch": 3, "acc": 0.99, "tags": ["a"]})
    assert C.read_metadata(path) == {"epoch": 3, "acc": 0.99, "tags": ["a"]}
    C.save(path, {"w": _g(2)})
    assert C.read_metadata(path) == {}


def test_device_argument(path):
    C.save(path, {"w": _g(2)})
    assert C.load(path, device="meta")["w"].device.type == "meta"
    assert C.load(path, like={"w": torch.zeros(2, device="meta")})["w"].device.type == "meta"


# ---------------------------------------------------------------------------
# NamedTuples
# ---------------------------------------------------------------------------


def test_namedtuple_reimported_by_name(path):
    state = TrainState(torch.tensor(1), {"a": _g(2)}, "x")
    C.save(path, state)
    back = C.load(path)
    assert type(back) is TrainState
    meta = json.loads(safetensors.safe_open(path, "pt").metadata()["fdl.tree"])
    assert meta["cls"] == f"{__name__}:TrainState"


def test_local_namedtuple_needs_like(path):
    class Local(NamedTuple):
        a: torch.Tensor

    C.save(path, Local(_g(2)))
    with pytest.raises(ValueError, match="cannot be imported.*like="):
        C.load(path)
    back = C.load(path, like=Local(torch.zeros(2)))
    assert type(back) is Local and torch.equal(back.a, _g(2))


def _rewrite_structure(path, edit) -> None:
    """Rewrite the file with its fdl.tree metadata edited (checksum left valid)."""
    with safetensors.safe_open(path, "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    spec = json.loads(meta["fdl.tree"])
    edit(spec)
    meta["fdl.tree"] = json.dumps(spec)
    safetensors.torch.save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update(cls="collections:OrderedDict"), "is not a NamedTuple class"),
        (lambda s: s.update(cls="os.path:join"), "is not a NamedTuple class"),
        (lambda s: s.update(cls="no_such_module_xyz:T"), "cannot be imported"),
        (lambda s: s.update(fields=["step", "nu", "note"]), "has fields"),
    ],
)
def test_namedtuple_checked_on_load(path, edit, match):
    C.save(path, TrainState(torch.tensor(1), {"a": _g(2)}, None))
    _rewrite_structure(path, edit)
    with pytest.raises(ValueError, match=match):
        C.load(path)


# ---------------------------------------------------------------------------
# like= mismatches
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("like", "match"),
    [
        (
            {"params": {"w": torch.zeros(3)}, "step": 0},
            r"at 'params.w'.*shape \(2,\).*shape \(3,\)",
        ),
        ({"params": {"w": torch.zeros(2, dtype=torch.float64)}, "step": 0}, "torch.float64"),
        ({"params": {"v": torch.zeros(2)}, "step": 0}, r"at 'params': keys differ"),
        ({"params": {"w": torch.zeros(2)}, "step": torch.tensor(0)}, "at 'step'"),
        ({"params": [torch.zeros(2)], "step": 0}, "at 'params'"),
    ],
)
def test_like_mismatch_names_the_path(path, like, match):
    C.save(path, {"params": {"w": _g(2)}, "step": 3})
    with pytest.raises(ValueError, match=match):
        C.load(path, like=like)


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_crash_mid_write_keeps_previous_checkpoint(path, monkeypatch, failure):
    old = {"w": _g(1000), "step": 1}
    C.save(path, old)
    before = path.read_bytes()

    def half_then_fail(f, data):
        f.write(data[: len(data) // 2])
        f.flush()
        raise failure

    monkeypatch.setattr(C, "_write_bytes", half_then_fail)
    with pytest.raises(type(failure)):
        C.save(path, {"w": _g(1000, seed=1), "step": 2})
    assert path.read_bytes() == before
    _exact_same(C.load(path), old)
    assert os.listdir(path.parent) == [path.name]  # no temporary file left


def test_failed_rename_keeps_previous_checkpoint(path, monkeypatch):
    C.save(path, {"step": 1})

    def boom(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        C.save(path, {"step": 2})
    monkeypatch.undo()
    assert C.load(path) == {"step": 1}
    assert os.listdir(path.parent) == [path.name]


def test_unstorable_tree_writes_nothing(path):
    C.save(path, {"step": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="at 'opt.x'"):
        C.save(path, {"w": _g(2), "opt": {"x": object()}})
    with pytest.raises(TypeError, match="dict key"):
        C.save(path, {(1, 2): _g(2)})
    with pytest.raises(TypeError, match="JSON"):
        C.save(path, {"w": _g(2)}, metadata={"f": object()})
    with pytest.raises(TypeError, match="at 'sparse'"):
        C.save(path, {"sparse": torch.eye(2).to_sparse()})
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_new_file_permissions(path):
    C.save(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o644
    os.chmod(path, 0o600)
    C.save(path, {"a": 2})
    assert path.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------------------
# Truncated, corrupt and foreign files
# ---------------------------------------------------------------------------


@pytest.fixture
def good_bytes(path) -> bytes:
    C.save(path, {"params": {"w": _g(64)}, "step": 4})
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0, 4, 8, 20, 0.5, -1])
def test_truncated_file_raises_value_error(path, good_bytes, keep):
    n = int(len(good_bytes) * keep) if isinstance(keep, float) else keep % len(good_bytes)
    path.write_bytes(good_bytes[:n])
    with pytest.raises(ValueError, match=str(path)):
        C.load(path)


def test_flipped_data_byte_fails_checksum(path, good_bytes):
    data = bytearray(good_bytes)
    data[-3] ^= 0x01  # inside the tensor bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        C.load(path)


def test_damaged_header_raises_value_error(path, good_bytes):
    (n,) = struct.unpack("<Q", good_bytes[:8])
    header = bytearray(good_bytes[8 : 8 + n])
    header[n // 2] = ord("}")
    path.write_bytes(good_bytes[:8] + bytes(header) + good_bytes[8 + n :])
    with pytest.raises(ValueError, match=str(path)):
        C.load(path)


def test_damaged_structure_raises_value_error(path, good_bytes):
    _rewrite_structure(path, lambda s: s.update(t="mystery"))
    with pytest.raises(ValueError, match="unknown node type"):
        C.load(path)
    C.save(path, {"params": {"w": _g(64)}})
    _rewrite_structure(path, lambda s: s["c"][0]["c"][0].update(name="nope"))
    with pytest.raises(ValueError, match="do not match"):
        C.load(path)


def test_foreign_files_raise_value_error(path):
    safetensors.torch.save_file({"w": _g(2)}, path)
    with pytest.raises(ValueError, match="not an fdl checkpoint.*no fdl metadata"):
        C.load(path)
    with pytest.raises(ValueError, match="not an fdl checkpoint"):
        C.read_metadata(path)
    safetensors.torch.save_file({"w": _g(2)}, path, metadata={"fdl.format": "fdl.checkpoint/99"})
    with pytest.raises(ValueError, match="fdl.checkpoint/99"):
        C.load(path)
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=str(path)):
        C.load(path)
    path.write_text("just some text that is not a checkpoint")
    with pytest.raises(ValueError, match=str(path)):
        C.load(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.load(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------
# Resuming reproduces the uninterrupted run bit for bit
# ---------------------------------------------------------------------------


def _loss(params, x, y, key):
    h = fdl.nn.functional.relu(x @ params["fc1"]["weight"].T + params["fc1"]["bias"])
    h = fdl.nn.functional.dropout(h, 0.2, training=True, key=key)
    out = h @ params["fc2"]["weight"].T + params["fc2"]["bias"]
    return ((out - y) ** 2).mean()


def _train(params, opt_state, key, start, stop, opt):
    for step in range(start, stop):
        k_data, k_drop = fdl.random.split(fdl.random.fold_in(key, step))
        x = fdl.random.normal(k_data, (16, 5))
        y = x.sum(1, keepdim=True)
        grads = torch.func.grad(_loss)(params, x, y, k_drop)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = fdl.optim.apply_updates(params, updates)
    return params, opt_state


def test_resume_reproduces_uninterrupted_run(path):
    opt = fdl.optim.adam(lr=1e-2)
    model_key, key = fdl.random.split(fdl.random.key(0))
    k1, k2 = fdl.random.split(model_key)
    params = {
        "fc1": {"weight": fdl.random.normal(k1, (8, 5)) * 0.3, "bias": torch.zeros(8)},
        "fc2": {"weight": fdl.random.normal(k2, (1, 8)) * 0.3, "bias": torch.zeros(1)},
    }
    state0 = opt.init(params)
    full = _train(params, state0, key, 0, 10, opt)

    p5, s5 = _train(params, state0, key, 0, 5, opt)
    C.save(path, {"params": p5, "opt_state": s5, "step": 5, "key": key})
    for like in (None, {"params": params, "opt_state": state0, "step": 0, "key": key}):
        ckpt = C.load(path, like=like)
        assert type(ckpt["opt_state"]) is type(s5)
        resumed = _train(ckpt["params"], ckpt["opt_state"], ckpt["key"], ckpt["step"], 10, opt)
        assert_trees_close(resumed, full, rtol=0, atol=0)
    assert not fdl.tree.allclose(p5, full[0])  # the last five steps did change something


def test_docs_examples_run():
    """Every ```python block of docs/checkpoint.md runs, in order, in one namespace."""
    run_python_blocks("checkpoint.md")
