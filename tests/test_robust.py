"""fdl.robust against torchattacks on one small CNN, and the attacks' invariants.

The random start is handed to torchattacks from fdl's key by replacing its
``torch.empty_like`` / ``torch.zeros_like`` inside its own PGD modules.

* FGSM and L-inf PGD equal torchattacks exactly (``torch.equal``): a step uses
  only the gradient's sign, and the clamps are exact.
* L2 PGD steps along ``g / ||g||``: fdl's cross-entropy (its own formula) and
  torch's fused one give gradients equal to a few ulps, so each step may
  differ by ``~alpha * 8 ulp``; after ``steps`` steps the bound is
  ``steps * alpha * 8 * eps_machine`` per entry.
* CW runs Adam for many steps, where fdl's Adam agrees with
  ``torch.optim.Adam`` to rounding: 1e-5 (float32) / 1e-10 (float64).
"""

from __future__ import annotations

import pytest
import torch

import fdl
from fdl import robust

torchattacks = pytest.importorskip("torchattacks")
import torchattacks.attacks.pgd as ta_pgd  # noqa: E402
import torchattacks.attacks.pgdl2 as ta_pgdl2  # noqa: E402

N = 6
SHAPE = (1, 8, 8)


def _fdl_cnn():
    return fdl.nn.Sequential(
        fdl.nn.Conv2d(1, 4, 3, padding=1),
        fdl.nn.ReLU(),
        fdl.nn.MaxPool2d(2),
        fdl.nn.Flatten(),
        fdl.nn.Linear(4 * 4 * 4, 10),
    )


def _torch_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 10),
    )


class _Shift(torch.nn.Module):
    """Logits + a constant: the same classifier, with every logit positive (for CW)."""

    def __init__(self, module, shift):
        super().__init__()
        self.module, self.shift = module, shift

    def forward(self, x):
        return self.module(x) + self.shift


def _model(dtype, shift=0.0):
    layer = _fdl_cnn()
    params = fdl.tree.map(lambda t: (3 * t).to(dtype), layer.init(fdl.random.key(0)))
    module = _torch_cnn().to(dtype).eval()
    module.load_state_dict(fdl.nn.state_dict(params))
    if shift:
        return (lambda x: layer.apply(params, x) + shift), _Shift(module, shift).eval()
    return (lambda x: layer.apply(params, x)), module


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture(scope="module")
def model(dtype):
    return _model(dtype)


@pytest.fixture(scope="module")
def batch(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(N, *SHAPE, generator=g, dtype=torch.float64).to(dtype)
    x[0, 0, :2] = 0.0  # entries on the range's edges, where clamping acts
    x[1, 0, :2] = 1.0
    y = torch.tensor([3, 0, 7, 1, 1, 9])
    target = torch.tensor([1, 2, 3, 4, 5, 6])
    return x, y, target


def _torchattacks(attack, module, targeted, target, **kwargs):
    atk = attack(module, **kwargs)
    if targeted:
        atk.set_mode_targeted_by_function(lambda images, labels: target, quiet=True)
    return atk


# ---------------------------------------------------------------------------
# feeding torchattacks fdl's random start
# ---------------------------------------------------------------------------


class _Preset:
    """What ``torch.empty_like(t)`` returns: its ``uniform_``/``normal_`` give fdl's draws."""

    def __init__(self, feed, like):
        self.feed, self.like = feed, like

    def uniform_(self, low, high):
        expect_low, expect_high, value = self.feed.pop("uniform")
        assert (low, high) == (expect_low, expect_high)
        assert value.shape == self.like.shape
        return value.clone()

    def normal_(self):
        value = self.feed.pop("normal")
        assert value.shape == self.like.shape
        return value.clone()


class _TorchFeeding:
    """``torch`` as a torchattacks module sees it, its ``*_like`` random tensors preset."""

    def __init__(self, feed):
        self.feed = feed

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty_like(self, t):
        return _Preset(self.feed, t)

    zeros_like = empty_like


def _feed_linf(monkeypatch, x, eps, key):
    delta = fdl.random.uniform(
        key,
        x.shape,
        -torch.tensor(eps, dtype=x.dtype),
        torch.tensor(eps, dtype=x.dtype),
        dtype=x.dtype,
    )
    feed = {"uniform": (-eps, eps, delta)}
    monkeypatch.setattr(ta_pgd, "torch", _TorchFeeding(feed))
    return feed


def _feed_l2(monkeypatch, x, key):
    k_dir, k_radius = fdl.random.split(key)
    z = fdl.random.normal(k_dir, x.shape, dtype=x.dtype)
    r = fdl.random.uniform(k_radius, (x.shape[0],), dtype=x.dtype).reshape(-1, 1, 1, 1)
    feed = {"normal": z, "uniform": (0, 1, r)}
    monkeypatch.setattr(ta_pgdl2, "torch", _TorchFeeding(feed))
    return feed


def test_random_start_l2_matches_formula(dtype):
    """The L2 start: ||delta|| = r * eps with fdl's r, direction of fdl's z."""
    x = torch.zeros(4, *SHAPE, dtype=dtype)
    key = fdl.random.key(3)
    delta = robust.random_start(x, eps=0.5, key=key, norm="2")
    k_dir, k_radius = fdl.random.split(key)
    r = fdl.random.uniform(k_radius, (4,), dtype=dtype)
    z = fdl.random.normal(k_dir, x.shape, dtype=dtype)
    norms = delta.reshape(4, -1).norm(dim=1)
    torch.testing.assert_close(norms, 0.5 * r)
    torch.testing.assert_close(
        delta / norms.view(-1, 1, 1, 1), z / z.reshape(4, -1).norm(dim=1).view(-1, 1, 1, 1)
    )


# ---------------------------------------------------------------------------
# parity registry: (id, fdl call, torchattacks call)
# ---------------------------------------------------------------------------

PARITY = [
    *[
        (
            f"fgsm_eps{eps}_{'targeted' if t else 'untargeted'}",
            lambda f, x, y, key, t=t, eps=eps: robust.fgsm(f, x, y, eps=eps, targeted=t),
            lambda m, x, y, mp, key, tgt, t=t, eps=eps: _torchattacks(
                torchattacks.FGSM, m, t, tgt, eps=eps
            )(x, y),
            t,
            0,  # exact
        )
        for eps in (8 / 255, 0.3)
        for t in (False, True)
    ],
    *[
        (
            f"pgd_inf_start{rs}_{'targeted' if t else 'untargeted'}",
            lambda f, x, y, key, t=t, rs=rs: robust.pgd(
                f, x, y, eps=0.2, alpha=0.05, steps=7, key=key, random_start=rs, targeted=t
            ),
            lambda m, x, y, mp, key, tgt, t=t, rs=rs: (
                _feed_linf(mp, x, 0.2, key),
                _torchattacks(
                    torchattacks.PGD, m, t, tgt, eps=0.2, alpha=0.05, steps=7, random_start=rs
                )(x, y),
            )[1],
            t,
            0,
        )
        for rs in (True, False)
        for t in (False, True)
    ],
    (
        "pgd_inf_defaults",
        lambda f, x, y, key: robust.pgd(f, x, y, key=key),
        lambda m, x, y, mp, key, tgt: (_feed_linf(mp, x, 8 / 255, key), torchattacks.PGD(m)(x, y))[
            1
        ],
        False,
        0,
    ),
    *[
        (
            f"pgd_l2_start{rs}_{'targeted' if t else 'untargeted'}",
            lambda f, x, y, key, t=t, rs=rs: robust.pgd(
                f, x, y, eps=1.5, alpha=0.4, steps=7, key=key, norm="2", random_start=rs, targeted=t
            ),
            lambda m, x, y, mp, key, tgt, t=t, rs=rs: (
                _feed_l2(mp, x, key),
                _torchattacks(
                    torchattacks.PGDL2, m, t, tgt, eps=1.5, alpha=0.4, steps=7, random_start=rs
                )(x, y),
            )[1],
            t,
            7 * 0.4,  # steps * alpha: the L2 error bound's scale
        )
        for rs in (True, False)
        for t in (False, True)
    ],
    (
        "pgd_l2_defaults",
        lambda f, x, y, key: robust.pgd(f, x, y, key=key, norm="2"),
        lambda m, x, y, mp, key, tgt: (_feed_l2(mp, x, key), torchattacks.PGDL2(m)(x, y))[1],
        False,
        10 * 0.2,
    ),
]


@pytest.mark.parametrize(
    "fdl_fn, ta_fn, targeted, path", [e[1:] for e in PARITY], ids=[e[0] for e in PARITY]
)
def test_matches_torchattacks(fdl_fn, ta_fn, targeted, path, model, batch, monkeypatch):
    """Exact where ``path == 0`` (sign steps); else within ``path * 8 * eps_machine``."""
    forward, module = model
    x, y, target = batch
    key = fdl.random.key(5)
    labels = target if targeted else y
    want = ta_fn(module, x, y, monkeypatch, key, target)
    got = fdl_fn(forward, x, labels, key)
    assert got.dtype == x.dtype
    if path == 0:
        assert torch.equal(got, want), float((got - want).abs().max())
    else:
        bound = path * 8 * torch.finfo(x.dtype).eps
        assert float((got - want).abs().max()) <= bound
    assert not torch.equal(got, x)  # the attack moved


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("kappa, steps", [(0.0, 50), (0.5, 30)])
def test_cw_matches_torchattacks(targeted, kappa, steps, dtype, batch):
    forward, module = _model(dtype, shift=50.0)
    x, y, target = batch
    labels = target if targeted else y
    atk = _torchattacks(
        torchattacks.CW, module, targeted, target, c=1.0, kappa=kappa, steps=steps, lr=0.05
    )
    want = atk(x, y)
    got = robust.cw(forward, x, labels, c=1.0, kappa=kappa, steps=steps, lr=0.05, targeted=targeted)
    tol = {torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert not torch.equal(got, x)  # some example found an adversarial point


def test_cw_margin_is_the_true_margin_for_any_logits():
    z = torch.tensor([[-3.0, -1.0, -2.0], [2.0, 5.0, 1.0]])
    y = torch.tensor([0, 1])
    margin = lambda **kw: robust.cw_margin(z, y, **kw)  # noqa: E731
    torch.testing.assert_close(margin(kappa=10.0), torch.tensor([-2.0, 3.0]))
    torch.testing.assert_close(margin(kappa=1.0), torch.tensor([-1.0, 3.0]))
    torch.testing.assert_close(margin(), torch.tensor([0.0, 3.0]))
    torch.testing.assert_close(margin(kappa=10.0, targeted=True), torch.tensor([2.0, -3.0]))


# ---------------------------------------------------------------------------
# invariants: the eps-ball and the valid range, for every attack
# ---------------------------------------------------------------------------

BALL = [
    ("fgsm", "inf", lambda f, x, y, eps, key, t: robust.fgsm(f, x, y, eps=eps, targeted=t)),
    (
        "pgd_inf",
        "inf",
        lambda f, x, y, eps, key, t: robust.pgd(
            f, x, y, eps=eps, alpha=eps / 3, steps=5, key=key, targeted=t
        ),
    ),
    (
        "pgd_inf_big_steps",
        "inf",
        lambda f, x, y, eps, key, t: robust.pgd(
            f, x, y, eps=eps, alpha=2 * eps, steps=3, key=key, targeted=t
        ),
    ),
    (
        "pgd_l2",
        "2",
        lambda f, x, y, eps, key, t: robust.pgd(
            f, x, y, eps=8 * eps, alpha=4 * eps, steps=5, key=key, norm="2", targeted=t
        ),
    ),
    (
        "pgd_l2_no_start",
        "2",
        lambda f, x, y, eps, key, t: robust.pgd(
            f, x, y, eps=8 * eps, alpha=20 * eps, steps=3, norm="2", random_start=False, targeted=t
        ),
    ),
]


@pytest.mark.parametrize("norm, fn", [b[1:] for b in BALL], ids=[b[0] for b in BALL])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eps", [0.01, 0.1, 0.3])
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_stays_in_ball_and_range(norm, fn, seed, eps, targeted):
    forward, _ = _model(torch.float32)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, *SHAPE, generator=g)
    x[:, :, 0] = 0.0
    x[:, :, -1] = 1.0
    y = torch.randint(0, 10, (N,), generator=g)
    adv = fn(forward, x, y, eps, fdl.random.key(seed), targeted)
    assert bool((adv >= 0).all() and (adv <= 1).all())
    delta = (adv - x).reshape(N, -1)
    radius = eps if norm == "inf" else 8 * eps
    size = delta.abs().amax(1) if norm == "inf" else delta.norm(dim=1)
    # one rounding of x + delta (and of the L2 rescale) may cross the radius by an ulp
    assert bool((size <= radius * (1 + 1e-6) + 1e-7).all()), float(size.max())


def test_cw_stays_in_range(batch):
    forward, _ = _model(torch.float32)
    x = batch[0].float()
    adv = robust.cw(forward, x, batch[1], c=5.0, steps=20, lr=0.1)
    assert bool((adv >= 0).all() and (adv <= 1).all())


def test_attacks_raise_the_loss_and_targeted_ones_reach_the_target():
    forward, _ = _model(torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, *SHAPE, generator=g, dtype=torch.float64)
    y = forward(x).argmax(1)
    loss = lambda v: float(fdl.losses.cross_entropy(forward(v), y))  # noqa: E731
    key = fdl.random.key(0)
    assert loss(robust.fgsm(forward, x, y, eps=0.1)) > loss(x)
    assert loss(robust.pgd(forward, x, y, eps=0.1, alpha=0.02, steps=10, key=key)) > loss(
        robust.fgsm(forward, x, y, eps=0.1)
    )
    target = (y + 1) % 10
    adv = robust.pgd(forward, x, target, eps=0.5, alpha=0.05, steps=40, key=key, targeted=True)
    assert float((forward(adv).argmax(1) == target).double().mean()) > 0.9


def test_random_start_needs_a_key():
    forward, _ = _model(torch.float32)
    with pytest.raises(ValueError, match="key"):
        robust.pgd(forward, torch.rand(2, *SHAPE), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="norm"):
        robust.pgd(
            forward, torch.rand(2, *SHAPE), torch.tensor([0, 1]), norm="1", key=fdl.random.key(0)
        )


# ---------------------------------------------------------------------------
# vmap and torch.compile
# ---------------------------------------------------------------------------

KEY = fdl.random.key(11)
ALL_ATTACKS = [
    ("fgsm", lambda f, x, y, eps: robust.fgsm(f, x, y, eps=eps)),
    ("pgd_inf", lambda f, x, y, eps: robust.pgd(f, x, y, eps=eps, alpha=eps / 2, steps=2, key=KEY)),
    (
        "pgd_l2",
        lambda f, x, y, eps: robust.pgd(
            f, x, y, eps=4 * eps, alpha=2 * eps, steps=2, key=KEY, norm="2"
        ),
    ),
    (
        "pgd_targeted",
        lambda f, x, y, eps: robust.pgd(
            f, x, (y + 1) % 10, eps=eps, alpha=eps / 2, steps=2, key=KEY, targeted=True
        ),
    ),
    ("cw", lambda f, x, y, eps: robust.cw(f, x, y, c=10 * eps, steps=3, lr=0.1)),
]


@pytest.fixture(scope="module")
def stacked():
    g = torch.Generator().manual_seed(6)
    return torch.rand(2, N, *SHAPE, generator=g), torch.randint(0, 10, (2, N), generator=g)


@pytest.mark.parametrize("fn", [a[1] for a in ALL_ATTACKS], ids=[a[0] for a in ALL_ATTACKS])
def test_vmap_over_batches_and_eps_equals_a_loop(fn, stacked):
    """One vmap over (batch, eps) pairs: eps is a tensor, so it batches too."""
    forward, _ = _model(torch.float32)
    xs, ys = stacked
    eps = torch.tensor([0.05, 0.2])
    got = torch.func.vmap(lambda x, y, e: fn(forward, x, y, e))(xs, ys, eps)
    want = torch.stack([fn(forward, x, y, e) for x, y, e in zip(xs, ys, eps, strict=True)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def compiled_outputs(stacked):
    """Every attack in one ``torch.compile(fullgraph=True)`` graph (AOTAutograd-traced)."""
    forward, _ = _model(torch.float32)
    x, y = stacked[0][0], stacked[1][0]
    run_all = torch.compile(
        lambda x, y, eps: tuple(fn(forward, x, y, eps) for _, fn in ALL_ATTACKS),
        fullgraph=True,
        backend="aot_eager",
    )
    eps = torch.tensor(0.1)
    first = run_all(x, y, eps)
    with torch.compiler.set_stance("fail_on_recompile"):
        second = run_all(x, y, torch.tensor(0.2))  # a new eps tensor: no recompile
    return dict(zip([a[0] for a in ALL_ATTACKS], zip(first, second, strict=True), strict=True))


@pytest.mark.parametrize("name, fn", ALL_ATTACKS, ids=[a[0] for a in ALL_ATTACKS])
def test_compiled_equals_eager(name, fn, compiled_outputs, stacked):
    forward, _ = _model(torch.float32)
    x, y = stacked[0][0], stacked[1][0]
    for got, eps in zip(compiled_outputs[name], (0.1, 0.2), strict=True):
        torch.testing.assert_close(got, fn(forward, x, y, torch.tensor(eps)), rtol=1e-5, atol=1e-6)


def test_inputs_are_not_mutated(stacked):
    forward, _ = _model(torch.float32)
    x, y = stacked[0][0].clone(), stacked[1][0].clone()
    x0, y0 = x.clone(), y.clone()
    for _, fn in ALL_ATTACKS:
        fn(forward, x, y, torch.tensor(0.1))
    assert torch.equal(x, x0) and torch.equal(y, y0)


# ---------------------------------------------------------------------------
# examples/adversarial_mnist.py, quick mode
# ---------------------------------------------------------------------------


def test_adversarial_mnist_example_quick(tmp_path):
    import importlib.util
    import json
    import os
    import sys
    from pathlib import Path

    root = os.environ.get("FDL_DATA_DIR")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("FDL_DATA_DIR is unset or holds no MNIST/raw")
    path = Path(__file__).resolve().parents[1] / "examples" / "adversarial_mnist.py"
    spec = importlib.util.spec_from_file_location("_example_adversarial_mnist", path)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    example.main(
        ["--epochs", "1", "--limit", "128", "--test-limit", "64", "--adv-steps", "2",
         "--eval-steps", "2", "--eval-batch-size", "32", "--no-compile", "--out", str(tmp_path)]
    )  # fmt: skip
    acc = json.loads((tmp_path / "results.json").read_text())["accuracy"]
    assert set(acc) == {"standard", "PGD adversarial"}
    for row in acc.values():
        assert set(row) == {"clean"} | {
            f"{a} {e}" for a in ("FGSM", "PGD") for e in (0.1, 0.2, 0.3)
        }
        assert all(0 <= v <= 100 for v in row.values())
    assert "| standard |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "adversarial_grid.png").stat().st_size > 0


def test_docs_examples_run():
    """Every ```python block of docs/robust.md runs, in order, in one namespace."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "robust.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/robust.md block {i}", "exec"), namespace)
