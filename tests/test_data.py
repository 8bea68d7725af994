"""Tests for fdl.data: MNIST loading, preprocessing, augmentation, batching and splits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import fdl
from fdl import data

# --------------------------------------------------------------------------- registries

# (name, fdl preprocessing applied to (train, test), torch reference on (train, test))
PREPROCESSING = [
    (
        "normalize_scalar",
        lambda tr, te: data.normalize(te, 0.5, 0.5),
        lambda tr, te: TF.normalize(te, [0.5] * te.shape[1], [0.5] * te.shape[1]),
    ),
    (
        "normalize_per_channel",
        lambda tr, te: data.normalize(te, [0.1, 0.2, 0.3], [0.5, 2.0, 1.5]),
        lambda tr, te: TF.normalize(te, [0.1, 0.2, 0.3], [0.5, 2.0, 1.5]),
    ),
    (
        "standardize_features",
        lambda tr, te: data.standardize(te, data.fit_standardize(tr)),
        lambda tr, te: (te - tr.mean(0)) / tr.std(0, correction=0),
    ),
    (
        "standardize_channels",
        lambda tr, te: data.standardize(te, data.fit_standardize(tr, dim=(0, 2, 3))),
        lambda tr, te: TF.normalize(
            te,
            tr.mean(dim=(0, 2, 3)).tolist(),
            tr.std(dim=(0, 2, 3), correction=0).tolist(),
        ),
    ),
    (
        "min_max_scale",
        lambda tr, te: data.min_max_scale(te, data.fit_min_max(tr), (-1.0, 1.0)),
        lambda tr, te: -1.0 + 2.0 * (te - tr.amin(0)) / (tr.amax(0) - tr.amin(0)),
    ),
]

# (name, augmentation as fn(key, x), keeps the shape)
AUGMENTATIONS = [
    ("random_shift", lambda k, x: data.random_shift(k, x, 2), True),
    ("random_crop", lambda k, x: data.random_crop(k, x, (5, 6), padding=1), False),
    ("random_flip", lambda k, x: data.random_flip(k, x, 0.5), True),
    ("random_flip_vertical", lambda k, x: data.random_flip(k, x, 0.5, dim=-2), True),
    ("gaussian_noise", lambda k, x: data.gaussian_noise(k, x, 0.1), True),
]


def _images(n: int = 16, c: int = 3, h: int = 7, w: int = 8, seed: int = 0) -> torch.Tensor:
    return fdl.random.uniform(fdl.random.key(seed), (n, c, h, w))


# --------------------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist_test() -> data.Dataset:
    if not os.environ.get("FDL_DATA_DIR"):
        pytest.skip("FDL_DATA_DIR is unset and ../shared/data is missing: no MNIST files")
    return data.mnist(train=False)


def test_mnist_tensors(mnist_test: data.Dataset) -> None:
    x, y = mnist_test
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(y.unique().tolist()) == list(range(10))


def test_mnist_matches_torchvision_to_tensor(mnist_test: data.Dataset) -> None:
    ds = torchvision.datasets.MNIST(os.environ["FDL_DATA_DIR"], train=False)
    for i in (0, 1, 9999):
        img, label = ds[i]
        torch.testing.assert_close(mnist_test.x[i], TF.to_tensor(img), rtol=0, atol=0)
        assert int(mnist_test.y[i]) == label


def test_mnist_missing_files_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        data.mnist(tmp_path, train=True)
    msg = str(err.value)
    raw = tmp_path.resolve() / "MNIST" / "raw"
    assert str(raw) in msg
    assert str(raw / "train-images-idx3-ubyte") in msg
    assert str(raw / "train-labels-idx1-ubyte") in msg
    assert "FDL_DATA_DIR" in msg and "root" in msg


def test_mnist_failed_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: object) -> None:
        raise RuntimeError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(FileNotFoundError, match="downloading them failed") as err:
        data.mnist(tmp_path, train=False, download=True)
    assert "t10k-images-idx3-ubyte" in str(err.value)
    assert "network is unreachable" in str(err.value)


def test_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDL_DATA_DIR", str(tmp_path / "env"))
    assert data.data_root(tmp_path / "arg") == (tmp_path / "arg", False)
    assert data.data_root() == (tmp_path / "env", False)
    monkeypatch.delenv("FDL_DATA_DIR")
    assert data.data_root() == (Path("data"), True)


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("name, fdl_fn, torch_fn", PREPROCESSING, ids=[p[0] for p in PREPROCESSING])
def test_preprocessing_parity(name: str, fdl_fn, torch_fn) -> None:
    train = 3.0 * _images(32, seed=1) + 0.5
    test = (3.0 * _images(8, seed=2) + 0.5).requires_grad_(True)
    ref_in = test.detach().clone().requires_grad_(True)
    out, ref = fdl_fn(train, test), torch_fn(train, ref_in)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    cot = _images(8, seed=3)
    (g,) = torch.autograd.grad(out, test, cot)
    (g_ref,) = torch.autograd.grad(ref, ref_in, cot)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, fdl_fn, torch_fn", PREPROCESSING, ids=[p[0] for p in PREPROCESSING])
def test_preprocessing_is_pure(name: str, fdl_fn, torch_fn) -> None:
    train, test = _images(32, seed=1), _images(8, seed=2)
    train0, test0 = train.clone(), test.clone()
    fdl_fn(train, test)
    assert torch.equal(train, train0) and torch.equal(test, test0)


def test_standardize_fits_on_train_only() -> None:
    train = torch.tensor([[0.0, 7.0], [2.0, 7.0], [4.0, 7.0]])
    stats = data.fit_standardize(train)
    z = data.standardize(train, stats)
    torch.testing.assert_close(z[:, 0].mean(), torch.tensor(0.0))
    torch.testing.assert_close(z[:, 0].std(correction=0), torch.tensor(1.0))
    assert torch.equal(z[:, 1], torch.zeros(3))  # constant feature -> 0, not nan
    test = torch.tensor([[6.0, 8.0]])
    torch.testing.assert_close(data.standardize(test, stats), (test - stats.mean) / stats.std)


def test_min_max_scale_range() -> None:
    train = _images(32)
    scaled = data.min_max_scale(train, data.fit_min_max(train, dim=0), (2.0, 5.0))
    torch.testing.assert_close(scaled.amin(0), torch.full(train.shape[1:], 2.0))
    torch.testing.assert_close(scaled.amax(0), torch.full(train.shape[1:], 5.0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: data.normalize(torch.ones(2, 1, 3, 3), 0.5, 0.0), "std must be non-zero"),
        (lambda: data.fit_standardize(torch.ones(2, 3), dim=2), "dim 2 is out of range"),
        (
            lambda: data.min_max_scale(torch.ones(2), data.fit_min_max(torch.ones(2)), (1.0, 0.0)),
            "low < high",
        ),
    ],
)
def test_preprocessing_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("name, aug, same_shape", AUGMENTATIONS, ids=[a[0] for a in AUGMENTATIONS])
def test_augmentation_generic(name: str, aug, same_shape: bool) -> None:
    x = _images()
    x0 = x.clone()
    k1, k2 = fdl.random.split(fdl.random.key(3))
    out = aug(k1, x)
    assert torch.equal(x, x0), "input was modified"
    assert out.dtype == x.dtype and out.shape[:2] == x.shape[:2]
    if same_shape:
        assert out.shape == x.shape
    assert torch.equal(out, aug(k1, x)), "same key, different result"
    assert not torch.equal(out, aug(k2, x)), "different keys, same result"
    # per-sample randomness: samples of a batch of identical images differ
    same = x[:1].expand_as(x).clone()
    out_same = aug(k1, same)
    assert any(not torch.equal(out_same[0], out_same[i]) for i in range(1, len(x)))


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    # img shifted down by dy and right by dx, zeros moved in
    h, w = img.shape[-2:]
    out = torch.zeros_like(img)
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_random_shift_is_a_translation() -> None:
    x = _images(32) + 0.1  # no zero pixels
    out = data.random_shift(fdl.random.key(4), x, 2)
    seen = set()
    for img, res in zip(x, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(res, _shift(img, dy, dx))
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 5
    assert torch.equal(data.random_shift(fdl.random.key(4), x, 0), x)


def test_random_crop_matches_torchvision_crop() -> None:
    x = _images(16)
    out = data.random_crop(fdl.random.key(5), x, (4, 5))
    for img, res in zip(x, out, strict=True):
        hits = [
            (t, l)
            for t in range(0, 7 - 4 + 1)
            for l in range(0, 8 - 5 + 1)
            if torch.equal(res, TF.crop(img, t, l, 4, 5))
        ]
        assert len(hits) == 1


def test_random_flip_probability() -> None:
    x = _images(2000, c=1, h=2, w=3)
    out = data.random_flip(fdl.random.key(6), x, p=0.3)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert abs(float(flipped.float().mean()) - 0.3) < 0.04
    assert torch.equal(data.random_flip(fdl.random.key(6), x, p=0.0), x)
    assert torch.equal(data.random_flip(fdl.random.key(6), x, p=1.0), x.flip(-1))


def test_gaussian_noise_statistics() -> None:
    x = _images(100, c=1, h=10, w=10)
    noise = data.gaussian_noise(fdl.random.key(7), x, 0.2) - x
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 0.2) < 0.01
    clipped = data.gaussian_noise(fdl.random.key(7), x, 0.5, clip=(0.0, 1.0))
    assert float(clipped.min()) >= 0.0 and float(clipped.max()) <= 1.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: data.random_shift(fdl.random.key(0), torch.ones(3, 3), 1), r"\(N, C, H, W\)"),
        (lambda: data.random_crop(fdl.random.key(0), _images(), 9), "does not fit"),
        (lambda: data.random_flip(fdl.random.key(0), _images(), p=1.5), r"p must be in \[0, 1\]"),
        (lambda: data.random_flip(fdl.random.key(0), _images(), dim=0), "non-batch axis"),
        (lambda: data.gaussian_noise(fdl.random.key(0), _images(), -1.0), "std must be >= 0"),
    ],
)
def test_augmentation_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- batching


def test_batches_cover_every_sample_once() -> None:
    x, y = torch.arange(10.0).reshape(10, 1), torch.arange(10)
    for key in (None, fdl.random.key(0)):
        got = list(data.batches(x, y, batch_size=4, key=key))
        assert [len(b[0]) for b in got] == [4, 4, 2]
        ys = torch.cat([b[1] for b in got])
        assert sorted(ys.tolist()) == list(range(10))
        assert torch.equal(torch.cat([b[0] for b in got])[:, 0].long(), ys)  # rows stay paired
    assert [len(b[0]) for b in data.batches(x, batch_size=4, drop_last=True)] == [4, 4]
    assert data.num_batches(10, 4) == 3 and data.num_batches(10, 4, drop_last=True) == 2


def test_batches_shuffle_reproducible_per_epoch() -> None:
    y = torch.arange(100)
    key = fdl.random.key(1)

    def order(epoch: int) -> list[int]:
        ep = fdl.random.fold_in(key, epoch)
        return torch.cat([b for (b,) in data.batches(y, batch_size=32, key=ep)]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != list(range(100))


def test_batches_pad_and_weight() -> None:
    x = torch.arange(10.0)
    got = list(data.batches(x, batch_size=4, key=fdl.random.key(2), pad=True))
    assert all(len(b) == 2 and b[0].shape == (4,) for b in got)
    weights = torch.cat([w for _, w in got])
    assert weights.tolist() == [1.0] * 10 + [0.0] * 2
    real = torch.cat([b[w > 0] for b, w in got])
    assert sorted(real.tolist()) == x.tolist()


def test_batches_errors() -> None:
    with pytest.raises(ValueError, match="same leading size"):
        list(data.batches(torch.ones(3), torch.ones(4), batch_size=2))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(data.batches(torch.ones(3), batch_size=0))


# --------------------------------------------------------------------------- splits


def test_train_val_split() -> None:
    tr, va = data.train_val_split(fdl.random.key(0), 50, val_fraction=0.2)
    assert len(tr) == 40 and len(va) == 10
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(50))
    tr2, va2 = data.train_val_split(fdl.random.key(0), 50, val_size=10)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    tr3, va3 = data.train_val_split(None, 5, val_size=2)
    assert tr3.tolist() == [0, 1, 2] and va3.tolist() == [3, 4]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"val_fraction": 0.1, "val_size": 2}, "exactly one"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\)"),
        ({"val_size": 10}, r"val_size must be in \[1, 9\]"),
    ],
)
def test_train_val_split_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        data.train_val_split(fdl.random.key(0), 10, **kwargs)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 60), k=st.integers(2, 60), seed=st.integers(0, 2**31 - 1))
def test_kfold_partitions(n: int, k: int, seed: int) -> None:
    if k > n:
        with pytest.raises(ValueError, match="at least k samples"):
            data.kfold(fdl.random.key(seed), n, k)
        return
    folds = data.kfold(fdl.random.key(seed), n, k)
    assert len(folds) == k
    vals = [v.tolist() for _, v in folds]
    assert sorted(sum(vals, [])) == list(range(n))  # exact partition, no overlap
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for tr, va in folds:
        assert sorted(tr.tolist() + va.tolist()) == list(range(n))
        assert not set(tr.tolist()) & set(va.tolist())
    again = data.kfold(fdl.random.key(seed), n, k)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))


def test_kfold_key_matters_and_errors() -> None:
    a = data.kfold(fdl.random.key(0), 30, 3)
    b = data.kfold(fdl.random.key(1), 30, 3)
    assert any(not torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    for k in (0, 1, 31):
        with pytest.raises(ValueError, match="kfold"):
            data.kfold(fdl.random.key(0), 30, k)
