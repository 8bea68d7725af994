"""``fdl.nn.ModuleList`` / ``fdl.nn.ModuleDict`` against torch's containers.

A model holding both (with BatchNorm children) loads a torch model's ``state_dict``,
matches its outputs, running statistics and gradients, and round-trips back with
torch's strict check; the containers index, iterate and name keys as torch's do;
their ``init`` gives every child an independent key; models built on them are pure,
vmap and compile.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import pytest
import torch

import fdl
from fdl.nn import ModuleDict, ModuleList

F64 = torch.float64


# -- a model built on both containers, in fdl and in torch ----------------------------------


class Net(fdl.nn.Layer):
    """stem -> blocks (a ModuleList, BatchNorm inside) -> heads (a ModuleDict)."""

    stateful = True

    def __init__(self, dtype: torch.dtype = F64) -> None:
        opts = {"dtype": dtype}
        self.stem = fdl.nn.Linear(4, 8, **opts)
        self.blocks = ModuleList(
            [
                fdl.nn.Sequential(
                    fdl.nn.Linear(8, 8, **opts), fdl.nn.BatchNorm1d(8, **opts), fdl.nn.ReLU()
                ),
                fdl.nn.Linear(8, 8, **opts),
                fdl.nn.Tanh(),
                fdl.nn.BatchNorm1d(8, **opts),
            ]
        )
        self.heads = ModuleDict(
            {"cls": fdl.nn.Linear(8, 3, **opts), "act": fdl.nn.Tanh(), "reg": fdl.nn.Linear(8, 1)}
        )

    def init(self, key: Any) -> dict[str, Any]:
        k_stem, k_blocks, k_heads = fdl.random.split(key, 3)
        return {
            "stem": self.stem.init(k_stem),
            "blocks": self.blocks.init(k_blocks),
            "heads": self.heads.init(k_heads),
        }

    def init_state(self) -> dict[str, Any]:
        return {"blocks": self.blocks.init_state()}

    def apply(self, params: Any, x: torch.Tensor, *, state: Any, key: Any = None, train=False):
        x = self.stem.apply(params["stem"], x)
        blocks_p = self.blocks.split(params["blocks"])
        blocks_s = self.blocks.split(state["blocks"])
        new = []
        for layer, p, s in zip(self.blocks, blocks_p, blocks_s, strict=True):
            if layer.stateful:
                x, s = layer.apply(p, x, state=s, train=train)
            else:
                x = layer.apply(p, x)
            new.append(s)
        hp = self.heads.split(params["heads"])
        cls = self.heads["cls"].apply(hp["cls"], self.heads.act.apply(hp["act"], x))
        reg = self.heads["reg"].apply(hp["reg"], x.to(torch.float32)).to(x.dtype)
        return (cls, reg), {"blocks": self.blocks.join(new)}


class TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()),
                nn.Linear(8, 8),
                nn.Tanh(),
                nn.BatchNorm1d(8),
            ]
        )
        self.heads = nn.ModuleDict(
            {"cls": nn.Linear(8, 3), "act": nn.Tanh(), "reg": nn.Linear(8, 1)}
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        cls = self.heads["cls"](self.heads["act"](x))
        return cls, self.heads["reg"](x.float()).to(x.dtype)


def _torch_net() -> TorchNet:
    torch.manual_seed(0)
    net = TorchNet().double()
    net.heads["reg"].float()
    return net


@pytest.fixture(scope="module")
def net() -> Net:
    return Net()


def test_state_dict_keys_are_torchs(net: Net) -> None:
    params, state = net.init(fdl.random.key(0)), net.init_state()
    ref = _torch_net()
    got = fdl.nn.state_dict(params, state)
    assert list(got) == list(ref.state_dict())
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert list(params["blocks"]) == ["0", "1", "3"] and list(state["blocks"]) == ["0", "3"]
    assert list(params["heads"]) == ["cls", "reg"]
    ref.load_state_dict(got)  # strict


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_torch_checkpoint_in_outputs_state_and_grads_out(net: Net, train: bool) -> None:
    ref = _torch_net()
    ref.train(train)
    params, state = fdl.nn.load_state_dict(ref.state_dict(), net, with_state=True)
    x = torch.randn(16, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    leaves = {k: v.clone().requires_grad_() for k, v in fdl.nn.state_dict(params).items()}
    (cls, reg), new_state = net.apply(
        fdl.nn.load_state_dict(leaves, net), x, state=state, train=train
    )
    cls_ref, reg_ref = ref(x)
    torch.testing.assert_close(cls, cls_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(reg, reg_ref, rtol=1e-5, atol=1e-5)  # reg runs in float32
    # running statistics advanced exactly as torch's buffers
    want = {k: v for k, v in ref.state_dict().items() if "running" in k or "num_batches" in k}
    got = fdl.nn.state_dict({}, new_state)
    assert list(got) == list(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-10)
    # gradients with respect to every param
    w = torch.linspace(-1, 1, 3, dtype=F64)
    named = dict(ref.named_parameters())
    g = torch.autograd.grad((cls * w).sum() + reg.sum(), list(leaves.values()))
    g_ref = torch.autograd.grad((cls_ref * w).sum() + reg_ref.sum(), [named[k] for k in leaves])
    for k, a, b in zip(leaves, g, g_ref, strict=True):
        tol = 1e-5 if "reg" in k or a.dtype == torch.float32 else 1e-8
        torch.testing.assert_close(a.to(F64), b.to(F64), rtol=tol, atol=tol, msg=k)
    # and back into torch, strictly
    ref.load_state_dict(fdl.nn.state_dict(params, new_state))


def _layers() -> list[fdl.nn.Layer]:
    return [fdl.nn.Linear(3, 3), fdl.nn.ReLU(), fdl.nn.Linear(3, 3), fdl.nn.BatchNorm1d(3)]


CONTAINERS = {
    "list": lambda: ModuleList(_layers()),
    "dict": lambda: ModuleDict(OrderedDict(zip("abcd", _layers(), strict=True))),
}


@pytest.mark.parametrize("make", CONTAINERS.values(), ids=CONTAINERS.keys())
def test_init_gives_each_child_an_independent_key(make: Any) -> None:
    c = make()
    key = fdl.random.key(3)
    params = c.init(key)
    names = [name for name, _ in c.named_children()]
    keys = fdl.random.split(key, len(c))
    for i, (name, layer) in enumerate(c.named_children()):
        want = layer.init(keys[i])
        assert (name in params) == bool(want)
        if want:
            fdl.testing.assert_trees_close(params[name], want, rtol=0, atol=0)
    first, third = params[names[0]]["weight"], params[names[2]]["weight"]
    assert not torch.equal(first, third)  # same layer, different draws
    # the same keys as a Sequential of the same children, and deterministic
    seq = fdl.nn.Sequential(OrderedDict(c.named_children())).init(key)
    fdl.testing.assert_trees_close(params, seq, rtol=0, atol=0)
    fdl.testing.assert_trees_close(params, c.init(key), rtol=0, atol=0)
    assert list(c.init_state()) == [names[3]] and c.stateful
    assert list(fdl.nn.state_dict(params, c.init_state()))[0] == f"{names[0]}.weight"


@pytest.mark.parametrize("make", CONTAINERS.values(), ids=CONTAINERS.keys())
def test_split_and_join(make: Any) -> None:
    c = make()
    params = c.init(fdl.random.key(0))
    parts = c.split(params)
    seq = parts if isinstance(parts, tuple) else tuple(parts.values())
    assert len(seq) == len(c) and seq[1] == {} and seq[0] is params[next(iter(params))]
    assert c.join(parts) == params
    assert c.split({**{n: {} for n, _ in c.named_children()}, **params}) == parts
    with pytest.raises(ValueError, match="match no child"):
        c.split({**params, "zz": {}})
    with pytest.raises(NotImplementedError, match="has no apply"):
        c.apply(params, torch.ones(2, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.extra = 1
    c.check_params(params)
    with pytest.raises(ValueError, match="weight"):
        c.check_params({**params, seq_name(c, 0): {"weight": torch.zeros(2, 3)}})


def seq_name(c: Any, i: int) -> str:
    return list(c.named_children())[i][0]


def test_module_list_indexes_iterates_and_concatenates_as_torch() -> None:
    layers = [fdl.nn.Linear(2, 2), fdl.nn.ReLU(), fdl.nn.Tanh(), fdl.nn.Linear(2, 3)]
    ours = ModuleList(layers)
    ref = torch.nn.ModuleList(
        [torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Tanh(), torch.nn.Linear(2, 3)]
    )
    assert len(ours) == len(ref) == 4
    assert list(ours) == layers and ours[-1] is layers[-1] and ours[1] is layers[1]
    for idx in (slice(1, 3), slice(None, None, -1), slice(3, 1)):
        part, ref_part = ours[idx], ref[idx]
        assert isinstance(part, ModuleList) and len(part) == len(ref_part)
        assert [n for n, _ in part.named_children()] == [n for n, _ in ref_part.named_children()]
        assert [type(m).__name__ for m in part] == [type(m).__name__ for m in ref_part]
    for idx in (4, -5):
        with pytest.raises(IndexError) as got:
            ours[idx]
        with pytest.raises(IndexError) as want:
            ref[idx]
        assert str(got.value) == str(want.value)
    both = ours + ModuleList([fdl.nn.ReLU()])
    assert len(both) == len(ref + torch.nn.ModuleList([torch.nn.ReLU()])) == 5
    assert [n for n, _ in both.named_children()] == ["0", "1", "2", "3", "4"]
    assert ours == ModuleList(layers) and hash(ours) == hash(ModuleList(layers))
    assert ours != ModuleList(layers[:3]) and len(ModuleList()) == 0
    assert ModuleList().init(fdl.random.key(0)) == {} and not ModuleList().stateful
    assert "(3): Linear" in repr(ours)
    with pytest.raises(TypeError, match="fdl.nn layer"):
        ModuleList([torch.nn.ReLU()])
    with pytest.raises(TypeError, match="iterable"):
        ModuleList(fdl.nn.ReLU())
    assert not hasattr(ours, "append")


def test_module_dict_keys_and_access_as_torch() -> None:
    names = ["zeta", "alpha", "mid"]
    ours = ModuleDict({n: fdl.nn.Linear(2, 2) for n in names})
    ref = torch.nn.ModuleDict({n: torch.nn.Linear(2, 2) for n in names})
    assert list(ours) == list(ref) == ours.keys() == list(ref.keys()) == names
    assert [n for n, _ in ours.items()] == [n for n, _ in ref.items()]
    assert len(ours.values()) == len(list(ref.values())) == len(ours) == 3
    assert "alpha" in ours and "beta" not in ours and ours.alpha is ours["alpha"]
    with pytest.raises(KeyError):
        ref["beta"]
    with pytest.raises(KeyError):
        ours["beta"]
    with pytest.raises(AttributeError):
        _ = ours.beta
    pairs = ModuleDict([("b", fdl.nn.ReLU()), ("a", fdl.nn.Tanh())])
    assert pairs.keys() == list(
        torch.nn.ModuleDict([("b", torch.nn.ReLU()), ("a", torch.nn.Tanh())])
    )
    params = ours.init(fdl.random.key(0))
    assert list(params) == names
    assert list(fdl.nn.state_dict(params)) == list(ref.state_dict())
    ref.load_state_dict(fdl.nn.state_dict(params))
    # names torch refuses (KeyError there; ValueError here, as Sequential's names)
    for bad in ("a.b", "", "keys"):
        with pytest.raises(KeyError):
            torch.nn.ModuleDict({bad: torch.nn.ReLU()})
        with pytest.raises(ValueError):
            ModuleDict({bad: fdl.nn.ReLU()})
    with pytest.raises(ValueError, match="shadows"):
        ModuleDict({"split": fdl.nn.ReLU()})  # an fdl method
    with pytest.raises(TypeError, match="fdl.nn layer"):
        ModuleDict({"a": 1})
    with pytest.raises(TypeError, match="pair"):
        ModuleDict([fdl.nn.ReLU()])
    assert ModuleDict() == ModuleDict({}) and len(ModuleDict(None)) == 0


def test_models_on_the_containers_are_pure(net: Net) -> None:
    params, state = net.init(fdl.random.key(0)), net.init_state()
    before = fdl.tree.map(torch.clone, (params, state))
    x = torch.randn(8, 4, dtype=F64)
    x0 = x.clone()
    _, new_state = net.apply(params, x, state=state, train=True)
    fdl.testing.assert_trees_close((params, state), before, rtol=0, atol=0)
    assert torch.equal(x, x0)
    assert int(new_state["blocks"]["3"]["num_batches_tracked"]) == 1
    assert int(state["blocks"]["3"]["num_batches_tracked"]) == 0


def test_models_on_the_containers_vmap_and_compile(net: Net) -> None:
    state = net.init_state()
    x = torch.randn(8, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    # an ensemble of three models: vmap over stacked params, eval mode
    members = [net.init(fdl.random.key(i)) for i in range(3)]
    stacked = fdl.tree.map(lambda *v: torch.stack(v), *members)
    ys = torch.func.vmap(lambda p: net.apply(p, x, state=state)[0][0])(stacked)
    for i, p in enumerate(members):
        torch.testing.assert_close(
            ys[i], net.apply(p, x, state=state)[0][0], rtol=1e-10, atol=1e-10
        )

    def loss(p: Any, s: Any, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        (cls, reg), s = net.apply(p, x, state=s, train=True)
        return cls.square().mean() + reg.square().mean(), s

    step = torch.compile(torch.func.grad_and_value(loss, has_aux=True), fullgraph=True)
    params = members[0]
    (g, (value, s1)) = step(params, state, x)
    (g_e, (value_e, s1_e)) = torch.func.grad_and_value(loss, has_aux=True)(params, state, x)
    fdl.testing.assert_trees_close((g, value, s1), (g_e, value_e, s1_e), rtol=1e-5, atol=1e-5)
