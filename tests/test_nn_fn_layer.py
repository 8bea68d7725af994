"""The one-call layers (``_FnLayer``): each field is an argument of the layer's function,
passed by name, and list arguments are stored as tuples (the layer stays hashable).

Registry: every public ``fdl.nn`` class built on ``_FnLayer``, found in ``fdl.nn``,
so a new one-call layer is checked without an entry here.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import fdl
from fdl.nn._fn_layer import _FnLayer

FN_LAYERS = sorted(
    (
        value
        for name, value in vars(fdl.nn).items()
        if not name.startswith("_") and isinstance(value, type) and issubclass(value, _FnLayer)
    ),
    key=lambda cls: cls.__name__,
)

# (layer built with lists, the same layer built with tuples, an input)
LIST_ARGS = [
    (
        fdl.nn.MaxPool3d([2, 2, 2], [1, 2, 1]),
        fdl.nn.MaxPool3d((2, 2, 2), (1, 2, 1)),
        (1, 2, 4, 4, 4),
    ),
    (fdl.nn.AdaptiveMaxPool2d([2, 3]), fdl.nn.AdaptiveMaxPool2d((2, 3)), (1, 2, 5, 5)),
    (fdl.nn.Upsample(size=[4, 6]), fdl.nn.Upsample(size=(4, 6)), (1, 1, 2, 3)),
    (fdl.nn.Fold([3, 3], [2, 2]), fdl.nn.Fold((3, 3), (2, 2)), (1, 8, 4)),
]


def test_registry_is_not_empty():
    names = {cls.__name__ for cls in FN_LAYERS}
    assert {"ReLU6", "MaxPool3d", "MaxPool2d", "PixelShuffle", "Upsample", "Dropout2d"} <= names


@pytest.mark.parametrize("cls", FN_LAYERS, ids=lambda cls: cls.__name__)
def test_every_field_is_an_argument_of_fn(cls):
    if "_fn" not in dir(cls):
        assert "_forward" in cls.__dict__, f"{cls.__name__} has neither fn nor its own _forward"
        return
    params = inspect.signature(cls._fn).parameters
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in params]
    assert not missing, f"{cls.__name__}: fields {missing} are not arguments of {cls._fn.__name__}"


@pytest.mark.parametrize("listed, tupled, shape", LIST_ARGS, ids=lambda v: type(v).__name__)
def test_list_arguments_are_stored_as_tuples(listed, tupled, shape):
    assert listed == tupled and hash(listed) == hash(tupled)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(listed.apply({}, x), tupled.apply({}, x), rtol=0, atol=0)


def test_non_tensor_input_names_the_layer():
    with pytest.raises(TypeError, match="Softplus: expected a tensor input"):
        fdl.nn.Softplus().apply({}, [1.0])
