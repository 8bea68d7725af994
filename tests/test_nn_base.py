"""The layer base's contract: frozen dataclass fields, converters, one validation per call.

Also the error messages of tree mismatches (every differing leaf named by its
dotted path) in ``apply`` and ``load_state_dict``, and the 0-d input errors of
``Linear``/``Bilinear``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import KW_ONLY, dataclass
from typing import Any

import pytest
import torch

import fdl
from fdl.nn._base import Layer, field
from fdl.nn._layer_utils import int_tuple

F64 = torch.float64


# -- layers written two ways: on the base alone, and explicitly decorated (older style) -----


class _Scale(Layer):
    """A layer using the base alone: fields, a converter and a cross-field check."""

    size: int
    shape: tuple[int, int] = field(default=1, converter=int_tuple(2))
    _: KW_ONLY
    scale: float = 2.0

    def _check_fields(self) -> None:
        if self.size <= 0:
            raise ValueError(f"_Scale: size must be positive, got {self.size}")

    def init(self, key: Any) -> dict[str, torch.Tensor]:
        return {"weight": torch.ones(self.size, dtype=F64)}

    def apply(self, params: Any, x: torch.Tensor, *, key: Any = None, train: bool = False) -> Any:
        return x * params["weight"] * self.scale


@dataclass(frozen=True)
class _Explicit(Layer):
    """A layer in the style of code written before the base made dataclasses itself."""

    size: int
    note: Any = dataclasses.field(default=None, compare=False, repr=False)
    _: KW_ONLY
    flag: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", int(self.size))

    def init(self, key: Any) -> dict[str, torch.Tensor]:
        return {"weight": torch.ones(self.size, dtype=F64)}

    def apply(self, params: Any, x: torch.Tensor, *, key: Any = None, train: bool = False) -> Any:
        return x * params["weight"]


@dataclass(frozen=True)
class _ExplicitChild(_Explicit):
    extra: int = 0


class _BaseChild(_Explicit):
    extra: int = 0


EXPLICIT = [_Explicit, _ExplicitChild, _BaseChild]


def test_subclasses_become_frozen_dataclasses() -> None:
    layer = _Scale(3, (2, 5), scale=0.5)
    assert dataclasses.is_dataclass(layer)
    assert layer == _Scale(3, (2, 5), scale=0.5) and hash(layer) == hash(
        _Scale(3, (2, 5), scale=0.5)
    )
    assert repr(layer) == "_Scale(size=3, shape=(2, 5), scale=0.5)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.size = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        _Scale(3, (2, 5), 0.5)  # type: ignore[misc]  # keyword-only after KW_ONLY


def test_converters_run_once_at_construction_with_the_layer_named() -> None:
    assert _Scale(3, 4).shape == (4, 4)
    with pytest.raises(TypeError, match=r"^_Scale: shape must be an int or a tuple of 2 ints"):
        _Scale(3, (1, 2, 3))
    with pytest.raises(ValueError, match="size must be positive"):
        _Scale(0)
    up = fdl.nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=1)
    assert (up.kernel_size, up.stride, up.padding, up.output_padding) == (
        (3, 3),
        (2, 2),
        (0, 0),
        (1, 1),
    )
    assert fdl.nn.MaxPool1d(3).stride == (3,)  # stride=None means kernel_size
    assert fdl.nn.Embedding(5, 2, padding_idx=-1).padding_idx == 4
    assert fdl.nn.LayerNorm(4).normalized_shape == (4,)


@pytest.mark.parametrize("cls", EXPLICIT, ids=lambda c: c.__name__)
def test_explicitly_decorated_subclasses_keep_working(cls: type) -> None:
    layer = cls(2.0, note="a", flag=True)
    assert layer.size == 2 and isinstance(layer.size, int)  # their own __post_init__ ran
    assert layer == cls(2, note="b", flag=True)  # compare=False kept
    assert "note" not in repr(layer)  # repr=False kept
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.size = 3
    assert [f.name for f in dataclasses.fields(cls) if f.kw_only] == ["flag"]
    params = layer.init(None)
    assert torch.equal(layer.apply(params, torch.ones(2, dtype=F64)), torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="'weight' has shape"):
        layer.apply({"weight": torch.ones(3, dtype=F64)}, torch.ones(2, dtype=F64))


def test_validation_runs_once_at_the_top_level_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = Layer._check_call

    def counting(self: Layer, params: Any, state: Any) -> None:
        calls.append(type(self).__name__)
        original(self, params, state)

    monkeypatch.setattr(Layer, "_check_call", counting)
    inner = fdl.nn.Sequential(fdl.nn.Linear(2, 3), fdl.nn.ReLU(), fdl.nn.BatchNorm1d(3))
    model = fdl.nn.Sequential(inner, fdl.nn.Linear(3, 1))
    params, state = model.init(fdl.random.key(0)), model.init_state()
    model.apply(params, torch.ones(4, 2), state=state, train=True)
    assert calls == ["Sequential"]  # the whole tree once; children run unchecked
    calls.clear()
    model[1].apply(params["1"], torch.ones(4, 3))
    assert calls == ["Linear"]


def test_validation_is_skipped_while_compiling() -> None:
    torch._dynamo.reset()
    layer = fdl.nn.Linear(3, 2)
    params = layer.init(fdl.random.key(0))
    compiled = torch.compile(layer.apply, fullgraph=True, backend="eager")
    assert torch.equal(compiled(params, torch.ones(2, 3)), layer.apply(params, torch.ones(2, 3)))


# -- errors that name every differing leaf by its dotted path ------------------------------


def _mlp() -> fdl.nn.Sequential:
    return fdl.nn.Sequential(
        OrderedDict(fc1=fdl.nn.Linear(3, 4), bn=fdl.nn.BatchNorm1d(4), fc2=fdl.nn.Linear(4, 2))
    )


def test_apply_names_every_differing_param_by_dotted_path() -> None:
    model = _mlp()
    params, state = model.init(fdl.random.key(0)), model.init_state()
    bad = {
        "fc1": {"weight": torch.zeros(4, 5), "bias": params["fc1"]["bias"]},
        "bn": params["bn"],
        "fc2": {"weight": params["fc2"]["weight"]},
        "fc3": {"weight": torch.zeros(1)},
    }
    with pytest.raises(ValueError) as err:
        model.apply(bad, torch.ones(2, 3), state=state)
    msg = str(err.value)
    assert "'fc2.bias' is missing from the params" in msg
    assert "'fc3.weight' is in the params but not in the layer" in msg
    assert "'fc1.weight' has shape (4, 5) in the params, expected (4, 3)" in msg


def test_apply_names_every_differing_state_leaf_by_dotted_path() -> None:
    model = _mlp()
    params = model.init(fdl.random.key(0))
    bad = {"bn": {"running_mean": torch.zeros(5), "num_batches_tracked": torch.tensor(0)}}
    with pytest.raises(ValueError) as err:
        model.apply(params, torch.ones(2, 3), state=bad)
    msg = str(err.value)
    assert "'bn.running_var' is missing from the state" in msg
    assert "'bn.running_mean' has shape (5,) in the state, expected (4,)" in msg


def test_load_state_dict_names_every_size_mismatch() -> None:
    model = _mlp()
    sd = fdl.nn.state_dict(model.init(fdl.random.key(0)), model.init_state())
    bad = {**sd, "fc1.weight": torch.zeros(4, 5), "fc2.bias": torch.zeros(3)}
    with pytest.raises(ValueError) as err:
        fdl.nn.load_state_dict(bad, model, with_state=True)
    msg = str(err.value)
    assert "'fc1.weight': the checkpoint has shape (4, 5), the model expects (4, 3)" in msg
    assert "'fc2.bias': the checkpoint has shape (3,), the model expects (2,)" in msg


@pytest.mark.parametrize(
    ("layer", "inputs"),
    [
        (fdl.nn.Linear(3, 2), (torch.tensor(1.0),)),
        (fdl.nn.Bilinear(3, 2, 4), (torch.tensor(1.0), torch.ones(2))),
        (fdl.nn.Bilinear(3, 2, 4), (torch.ones(3), torch.tensor(1.0))),
    ],
    ids=["Linear", "Bilinear-input1", "Bilinear-input2"],
)
def test_zero_dim_input_is_a_value_error(layer: Layer, inputs: tuple[torch.Tensor, ...]) -> None:
    params = layer.init(fdl.random.key(0))
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}: expected input\d? of shape"):
        layer.apply(params, *inputs)


def test_a_hand_written_init_assigns_attributes_then_the_layer_is_sealed():
    class MLP(fdl.nn.Layer):
        def __init__(self, width: int) -> None:
            self.fc1 = fdl.nn.Linear(3, width)
            self.fc2 = fdl.nn.Linear(width, 1)

        def init(self, key):
            k1, k2 = fdl.random.split(key)
            return {"fc1": self.fc1.init(k1), "fc2": self.fc2.init(k2)}

        def apply(self, params, x, *, key=None, train=False):
            return self.fc2.apply(params["fc2"], self.fc1.apply(params["fc1"], x).tanh())

    class Wider(MLP):
        def __init__(self) -> None:
            super().__init__(8)
            self.extra = 1  # still inside the outermost __init__

    for model in (MLP(4), Wider()):
        y = model.apply(model.init(fdl.random.key(0)), torch.ones(2, 3))
        assert y.shape == (2, 1)
        with pytest.raises(dataclasses.FrozenInstanceError, match="immutable"):
            model.fc1 = fdl.nn.Linear(3, 3)
    assert Wider().extra == 1
