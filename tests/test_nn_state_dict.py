"""state_dict / load_state_dict interop with torch checkpoints, and functionalize."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import fdl
from fdl import tree as ft
from fdl.testing import assert_pure, assert_trees_close

F64 = torch.float64


def _cnn(nn: Any, **dt: Any) -> Any:
    """The MNIST CNN: conv1, relu, pool, conv2, relu, pool, flatten, fc1, relu, fc2."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 4, 3, stride=1, padding=1, **dt),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(4, 8, 3, stride=1, padding=1, **dt),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(8 * 7 * 7, 16, **dt),
            relu3=nn.ReLU(),
            fc2=nn.Linear(16, 10, **dt),
        )
    )


def _with_bn(nn: Any, **dt: Any) -> Any:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, **dt),
        nn.BatchNorm2d(3, **dt),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 26 * 26, 4, bias=False, **dt),
        nn.BatchNorm1d(4, affine=False, **dt),
    )


def _nested(nn: Any, **dt: Any) -> Any:
    return nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 5, **dt)),
        nn.Tanh(),
        nn.Sequential(OrderedDict(head=nn.Linear(5, 3, **dt), act=nn.Sigmoid())),
    )


# registry: name -> (builder taking a namespace (fdl.nn or torch.nn) and dtype options)
MODELS: dict[str, Callable[..., Any]] = {
    "Linear": lambda nn, **dt: nn.Linear(28, 3, **dt),  # on the last axis of (2, 1, 28, 28)
    "Conv2d": lambda nn, **dt: nn.Conv2d(1, 2, 5, stride=2, **dt),
    "cnn_named": _cnn,
    "numbered": lambda nn, **dt: nn.Sequential(
        nn.Flatten(), nn.Linear(784, 8, **dt), nn.ReLU(), nn.Dropout(), nn.Linear(8, 2, **dt)
    ),
    "with_batchnorm": _with_bn,
    "nested": _nested,
}
NAMES = list(MODELS)


def _pair(name: str) -> tuple[Any, torch.nn.Module]:
    torch.manual_seed(0)
    return MODELS[name](fdl.nn, dtype=F64), MODELS[name](torch.nn, dtype=F64).eval()


def _x() -> torch.Tensor:
    return torch.randn(2, 1, 28, 28, dtype=F64, generator=torch.Generator().manual_seed(0))


def _call(model: Any, params: Any, state: Any, x: torch.Tensor) -> torch.Tensor:
    if model.stateful:
        return model.apply(params, x, state=state)[0]
    return model.apply(params, x)


@pytest.mark.parametrize("name", NAMES)
def test_keys_and_shapes_equal_torch_state_dict(name: str) -> None:
    model, module = _pair(name)
    params, state = model.init(fdl.random.key(0)), model.init_state()
    sd = fdl.nn.state_dict(params, state if model.stateful else None)
    expected = module.state_dict()
    assert list(sd) == list(expected)  # same keys, same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        k: tuple(v.shape) for k, v in expected.items()
    }
    assert list(fdl.nn.state_dict(params)) == [n for n, _ in module.named_parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_torch_checkpoint_loads_and_gives_torch_outputs(name: str, tmp_path: Path) -> None:
    model, module = _pair(name)
    path = tmp_path / "model.pt"
    torch.save(module.state_dict(), path)
    checkpoint = torch.load(path, weights_only=True)
    params, state = fdl.nn.load_state_dict(checkpoint, model, with_state=True)
    x = _x()
    assert_trees_close(_call(model, params, state, x), module(x), rtol=1e-10, atol=1e-10)
    # params only: buffer keys are recognised and left out
    only = fdl.nn.load_state_dict(checkpoint, model)
    assert_trees_close(only, params)
    # without a model every key is a param: fine for stateless models
    if not model.stateful:
        assert_trees_close(fdl.nn.load_state_dict(checkpoint), params)


@pytest.mark.parametrize("name", NAMES)
def test_fdl_params_load_into_torch_and_round_trip(name: str) -> None:
    model, module = _pair(name)
    params, state = model.init(fdl.random.key(3)), model.init_state()
    sd = fdl.nn.state_dict(params, state if model.stateful else None)
    module.load_state_dict(sd)  # strict: torch accepts exactly these keys
    x = _x()
    assert_trees_close(_call(model, params, state, x), module(x), rtol=1e-10, atol=1e-10)
    back = fdl.nn.load_state_dict(sd, model, with_state=True)
    assert_trees_close(back, (params, state), rtol=0, atol=0)


def test_state_dict_is_pure_and_returns_the_leaves() -> None:
    model = _with_bn(fdl.nn, dtype=F64)
    params, state = model.init(fdl.random.key(0)), model.init_state()
    sd = assert_pure(fdl.nn.state_dict, params, state)
    assert sd["0.weight"] is params["0"]["weight"]
    assert sd["5.running_var"] is state["5"]["running_var"]


def test_load_state_dict_casts_to_the_model_dtype_and_unwraps_parameters() -> None:
    module = torch.nn.Linear(3, 2)  # float32 checkpoint
    model = fdl.nn.Linear(3, 2, dtype=F64)
    params = fdl.nn.load_state_dict(dict(module.named_parameters()), model)
    assert {v.dtype for v in ft.leaves(params)} == {F64}
    raw = fdl.nn.load_state_dict(dict(module.named_parameters()))
    assert not any(isinstance(v, torch.nn.Parameter) for v in ft.leaves(raw))
    assert_trees_close(fdl.nn.load_state_dict(module), raw)  # a module is read via state_dict()


def test_load_state_dict_errors_name_keys_and_shapes() -> None:
    model, module = _pair("cnn_named")
    sd = module.state_dict()
    missing = {k: v for k, v in sd.items() if k != "fc1.bias"}
    with pytest.raises(ValueError, match=r"missing \['fc1.bias'\]"):
        fdl.nn.load_state_dict(missing, model)
    with pytest.raises(ValueError, match=r"unexpected \['fc3.weight'\]"):
        fdl.nn.load_state_dict({**sd, "fc3.weight": torch.zeros(1)}, model)
    wrong = {**sd, "fc1.weight": torch.zeros(16, 3136)}
    with pytest.raises(ValueError, match=r"'fc1.weight'.*\(16, 3136\).*\(16, 392\)"):
        fdl.nn.load_state_dict(wrong, model)
    with pytest.raises(TypeError, match="conv1.bias"):
        fdl.nn.load_state_dict({**sd, "conv1.bias": [0.0] * 4}, model)
    with pytest.raises(ValueError, match="needs the model"):
        fdl.nn.load_state_dict(sd, with_state=True)
    bn_model, bn_module = _pair("with_batchnorm")
    no_buffers = {k: v for k, v in bn_module.state_dict().items() if "running" not in k}
    with pytest.raises(ValueError, match="running_mean"):
        fdl.nn.load_state_dict(no_buffers, bn_model, with_state=True)
    with pytest.raises(TypeError, match="state_dict: params"):
        fdl.nn.state_dict([torch.zeros(1)])  # type: ignore[arg-type]


def test_load_state_dict_validates_without_allocating() -> None:
    model = fdl.nn.Linear(100_000, 100_000)  # 40 GB if it were allocated
    sd = {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"expects \(100000"):
        fdl.nn.load_state_dict(sd, model)


# -- functionalize ---------------------------------------------------------------------------


class _Net(torch.nn.Module):
    """A module with a tied weight, a persistent and a non-persistent buffer, and BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4, dtype=F64)
        self.bn = torch.nn.BatchNorm1d(4, dtype=F64)
        self.register_buffer("offset", torch.ones(4, dtype=F64))
        self.register_buffer("scale", torch.full((4,), 2.0, dtype=F64), persistent=False)

    def forward(self, x: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        return self.bn(self.fc(x)) * self.scale + self.offset + shift


def test_functionalize_stateless_values_and_grads_match_module() -> None:
    torch.manual_seed(0)
    net = MODELS["cnn_named"](torch.nn, dtype=F64)
    model = fdl.nn.functionalize(net)
    assert not model.stateful
    params = model.init(fdl.random.key(0))
    assert list(fdl.nn.state_dict(params)) == list(net.state_dict())
    assert params["fc1"]["weight"] is not net.fc1.weight  # a copy
    x = _x()
    y = assert_pure(model.apply, params, x)
    assert_trees_close(y, net(x), rtol=0, atol=0)
    grads = torch.func.grad(lambda p: model.apply(p, x).square().sum())(params)
    net.zero_grad()
    net(x).square().sum().backward()
    expected = ft.from_flat_dict({k: v.grad for k, v in net.named_parameters()})
    assert_trees_close(grads, expected, rtol=1e-10, atol=1e-10)
    # the fdl model's params also work: a round trip through fdl.nn.Sequential
    fdl_model = MODELS["cnn_named"](fdl.nn, dtype=F64)
    assert_trees_close(fdl_model.apply(params, x), y, rtol=1e-10, atol=1e-10)


def test_functionalize_threads_buffers_as_state_without_mutation() -> None:
    torch.manual_seed(0)
    net = _Net()
    model = fdl.nn.functionalize(net)
    assert model.stateful
    params, state = model.init(), model.init_state()
    assert sorted(fdl.nn.state_dict(params, state)) == sorted(net.state_dict())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    reference = _Net()
    reference.load_state_dict(net.state_dict())
    reference.train()
    for step in range(3):
        x = torch.randn(5, 4, dtype=F64)
        y, state = assert_pure(model.apply, params, x, state=state, train=True, shift=step)
        assert_trees_close(y, reference(x, shift=step), rtol=1e-10, atol=1e-10)
    expected = {
        k: v
        for k, v in reference.state_dict().items()
        if k.startswith("bn.running") or k.endswith("num_batches_tracked")
    }
    assert_trees_close(
        {k: v for k, v in fdl.nn.state_dict({}, state).items() if k in expected}, expected
    )
    # eval mode uses the running statistics; the wrapped module itself never changed
    reference.eval()
    x = torch.randn(5, 4, dtype=F64)
    assert_trees_close(model.apply(params, x, state=state)[0], reference(x), rtol=1e-10, atol=1e-10)
    assert_trees_close(dict(net.state_dict()), before, rtol=0, atol=0)
    assert net.training
    with pytest.raises(ValueError, match="state="):
        model.apply(params, x)


def test_functionalize_traces_under_compile_and_errors() -> None:
    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model = fdl.nn.functionalize(net)
    params = model.init()
    x = torch.randn(5, 3)
    compiled = torch.compile(model.apply, fullgraph=True, backend="eager")
    assert_trees_close(compiled(params, x), net(x))
    with pytest.raises(ValueError, match="'0.weight' has shape"):
        model.apply({**params, "0": {**params["0"], "weight": torch.zeros(2, 2)}}, x)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fdl.nn.functionalize(fdl.nn.Linear(2, 2))  # type: ignore[arg-type]
    shapes = model.param_shapes()
    assert {t.device.type for t in ft.leaves(shapes)} == {"meta"}


def test_docs_nn_md_examples_run() -> None:
    import doctest

    path = Path(__file__).resolve().parents[1] / "docs" / "nn.md"
    result = doctest.testfile(
        str(path),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.failed == 0 and result.attempted > 30
