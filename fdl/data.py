"""Datasets as tensors, preprocessing and augmentation as pure functions, keyed batching.

Everything here works on whole tensors or whole batches: a dataset is loaded
and converted once (``uint8`` pixels to ``float32`` in ``[0, 1]``), and every
transform after that is a pure function of its inputs (and of an
``fdl.random`` key when it is random). Nothing touches the global torch RNG.

Example:
    >>> import torch, fdl
    >>> x = torch.arange(10.0).reshape(10, 1)
    >>> y = torch.arange(10)
    >>> [len(bx) for bx, by in batches(x, y, batch_size=4)]
    [4, 4, 2]
    >>> folds = kfold(fdl.random.key(0), 10, 5)
    >>> sorted(torch.cat([val for _, val in folds]).tolist()) == list(range(10))
    True
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from fdl import random as _random
from fdl._arrays import leading_size

__all__ = [
    "Dataset",
    "MinMaxStats",
    "StandardizeStats",
    "batches",
    "data_root",
    "fit_min_max",
    "fit_standardize",
    "gaussian_noise",
    "kfold",
    "min_max_scale",
    "mnist",
    "normalize",
    "num_batches",
    "random_crop",
    "random_flip",
    "random_shift",
    "standardize",
    "train_val_split",
]

_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class Dataset(NamedTuple):
    """Inputs ``x`` and targets ``y`` as tensors with a common leading axis."""

    x: torch.Tensor
    y: torch.Tensor


# --------------------------------------------------------------------------- datasets


def data_root(root: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """Where datasets are read from, and whether downloading there is allowed.

    The root is ``root`` if given, else the ``FDL_DATA_DIR`` environment
    variable, else ``./data``. Only the ``./data`` fallback allows downloading;
    an explicit folder is read as it is.

    Returns:
        ``(path, download_allowed)``.

    Example:
        >>> data_root("/tmp/mnist")
        (PosixPath('/tmp/mnist'), False)
    """
    if root is not None:
        return Path(root), False
    env = os.environ.get("FDL_DATA_DIR")
    if env:
        return Path(env), False
    return Path("data"), True


def mnist(
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    *,
    download: bool | None = None,
) -> Dataset:
    """MNIST as two tensors, read once through ``torchvision.datasets.MNIST``.

    ``x = images / 255`` as ``float32`` of shape ``(N, 1, 28, 28)`` in ``[0, 1]``
    (what ``ToTensor()`` gives per sample, done once for the whole split) and
    ``y`` the labels as ``int64`` of shape ``(N,)``.

    Args:
        root: folder holding ``MNIST/raw/`` (torchvision layout). Defaults to
            ``FDL_DATA_DIR``, then ``./data``; see :func:`data_root`.
        train: the 60000-image training split, else the 10000-image test split.
        download: allow torchvision to download missing files. Default: only
            when falling back to ``./data``.

    Returns:
        A :class:`Dataset` ``(x, y)``.

    Raises:
        FileNotFoundError: the files are missing (and could not be downloaded);
            the message lists the exact files and folder looked at.

    Example:
        >>> x, y = mnist(train=False)  # reads $FDL_DATA_DIR/MNIST/raw
        >>> x.shape, x.dtype, y.shape
        (torch.Size([10000, 1, 28, 28]), torch.float32, torch.Size([10000]))
    """
    import torchvision

    path, allowed = data_root(root)
    if download is None:
        download = allowed
    try:
        ds = torchvision.datasets.MNIST(str(path), train=train, download=download)
    except Exception as err:  # missing files, or a failed download
        raise FileNotFoundError(_missing_mnist_message(path, train, download, err)) from err
    x = ds.data.unsqueeze(1).to(torch.float32) / 255.0  # (N, 28, 28) uint8 -> (N, 1, 28, 28)
    y = ds.targets.to(torch.int64)
    return Dataset(x, y)


def _missing_mnist_message(path: Path, train: bool, download: bool, err: Exception) -> str:
    raw = path.resolve() / "MNIST" / "raw"
    files = "\n".join(f"  {raw / name}" for name in _MNIST_FILES[train])
    tried = "downloading them failed" if download else "downloading was not enabled"
    return (
        f"MNIST {'train' if train else 'test'} split not found: looked in folder {raw} "
        f"for the files\n{files}\n{tried} ({err})\n"
        "Point fdl at a folder whose MNIST/raw/ holds them with the root argument "
        "(fdl.data.mnist(root=...), --data-dir in the examples) or the FDL_DATA_DIR "
        "environment variable, or pass download=True with network access."
    )


# --------------------------------------------------------------------------- preprocessing


def _channel_view(v: float | Sequence[float] | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if t.ndim == 1 and x.ndim >= 3:  # per-channel values broadcast over (C, H, W)
        t = t.reshape(-1, *([1] * (x.ndim - 2)))
    return t


def normalize(
    x: torch.Tensor,
    mean: float | Sequence[float] | torch.Tensor,
    std: float | Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """``(x - mean) / std``, per channel as ``torchvision.transforms.Normalize``.

    A sequence ``mean``/``std`` has one value per channel (axis ``-3``: ``C`` of
    ``(N, C, H, W)`` or ``(C, H, W)``); a scalar applies to every element.

    Example:
        >>> import torch
        >>> normalize(torch.tensor([0.0, 0.5, 1.0]), 0.5, 0.5)
        tensor([-1.,  0.,  1.])
    """
    m, s = _channel_view(mean, x), _channel_view(std, x)
    if bool((s == 0).any()):
        raise ValueError(f"normalize: std must be non-zero, got {std}")
    return (x - m) / s


class StandardizeStats(NamedTuple):
    """Mean and standard deviation fitted by :func:`fit_standardize` (kept dims)."""

    mean: torch.Tensor
    std: torch.Tensor


class MinMaxStats(NamedTuple):
    """Minimum and maximum fitted by :func:`fit_min_max` (kept dims)."""

    min: torch.Tensor
    max: torch.Tensor


def _dims(x: torch.Tensor, dim: int | Sequence[int]) -> tuple[int, ...]:
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -x.ndim <= d < x.ndim:
            raise ValueError(f"dim {d} is out of range for a tensor of shape {tuple(x.shape)}")
    return dims


def fit_standardize(x: torch.Tensor, dim: int | Sequence[int] = 0) -> StandardizeStats:
    """Fit per-feature ``mean`` and ``std`` on training data (population std, ``ddof = 0``).

    ``mean = x.mean(dim)``, ``std = sqrt(((x - mean) ** 2).mean(dim))``, with a
    zero ``std`` replaced by 1 so constant features map to 0. Use
    ``dim=(0, 2, 3)`` for per-channel statistics of images.

    Example:
        >>> import torch
        >>> stats = fit_standardize(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
        >>> stats.mean, stats.std
        (tensor([[2., 5.]]), tensor([[1., 1.]]))
    """
    dims = _dims(x, dim)
    mean = x.mean(dim=dims, keepdim=True)
    std = ((x - mean) ** 2).mean(dim=dims, keepdim=True).sqrt()
    std = torch.where(std == 0, torch.ones_like(std), std)
    return StandardizeStats(mean, std)


def standardize(x: torch.Tensor, stats: StandardizeStats) -> torch.Tensor:
    """``(x - stats.mean) / stats.std`` with statistics fitted on the training split.

    Example:
        >>> import torch
        >>> train = torch.tensor([[0.0], [2.0]])
        >>> standardize(torch.tensor([[4.0]]), fit_standardize(train))
        tensor([[3.]])
    """
    return (x - stats.mean) / stats.std


def fit_min_max(x: torch.Tensor, dim: int | Sequence[int] = 0) -> MinMaxStats:
    """Fit per-feature minimum and maximum on training data (for :func:`min_max_scale`).

    Example:
        >>> import torch
        >>> fit_min_max(torch.tensor([[1.0, 2.0], [3.0, -2.0]]))
        MinMaxStats(min=tensor([[ 1., -2.]]), max=tensor([[3., 2.]]))
    """
    dims = _dims(x, dim)
    return MinMaxStats(x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True))


def min_max_scale(
    x: torch.Tensor, stats: MinMaxStats, feature_range: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """``low + (x - min) / (max - min) * (high - low)``; a zero range divides by 1.

    Example:
        >>> import torch
        >>> train = torch.tensor([[0.0], [10.0]])
        >>> min_max_scale(torch.tensor([[5.0], [20.0]]), fit_min_max(train))
        tensor([[0.5000],
                [2.0000]])
    """
    low, high = feature_range
    if not low < high:
        raise ValueError(f"min_max_scale: feature_range needs low < high, got {feature_range}")
    span = stats.max - stats.min
    span = torch.where(span == 0, torch.ones_like(span), span)
    return low + (x - stats.min) / span * (high - low)


# --------------------------------------------------------------------------- augmentation


def _check_images(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{name}: expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}"
        )


def random_crop(
    key: _random.Key,
    x: torch.Tensor,
    size: int | tuple[int, int],
    padding: int = 0,
    fill: float = 0.0,
) -> torch.Tensor:
    """Crop each image of the batch at its own random offset, after zero padding.

    Each image of ``x`` ``(N, C, H, W)`` is padded by ``padding`` pixels of
    ``fill`` on every side and an ``(h, w) = size`` window is cut at offsets
    ``top ~ U{0..H + 2 padding - h}``, ``left ~ U{0..W + 2 padding - w}`` drawn
    from ``key`` per image (as ``torchvision.transforms.RandomCrop``, batched).

    Returns:
        ``(N, C, h, w)``.

    Example:
        >>> import torch, fdl
        >>> random_crop(fdl.random.key(0), torch.ones(8, 1, 28, 28), 24).shape
        torch.Size([8, 1, 24, 24])
    """
    _check_images(x, "random_crop")
    h, w = (size, size) if isinstance(size, int) else size
    n, _, hx, wx = x.shape
    hp, wp = hx + 2 * padding, wx + 2 * padding
    if not (0 < h <= hp and 0 < w <= wp):
        raise ValueError(f"random_crop: crop size {(h, w)} does not fit padded images {(hp, wp)}")
    if padding:
        x = torch.nn.functional.pad(x, (padding,) * 4, value=fill)
    k_top, k_left = _random.split(key)
    top = _random.randint(k_top, (n,), 0, hp - h + 1)
    left = _random.randint(k_left, (n,), 0, wp - w + 1)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, h)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (N, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = x[batch, :, rows[:, :, None], cols[:, None, :]]  # (N, h, w, C)
    return out.permute(0, 3, 1, 2)  # (N, C, h, w)


def random_shift(
    key: _random.Key, x: torch.Tensor, max_shift: int, fill: float = 0.0
) -> torch.Tensor:
    """Translate each image by its own random ``(dy, dx)`` in ``[-max_shift, max_shift]``.

    Pixels moved in from outside are ``fill``; the shape is unchanged. Equals
    :func:`random_crop` with ``size = (H, W)`` and ``padding = max_shift``.

    Example:
        >>> import torch, fdl
        >>> x = torch.rand(4, 1, 28, 28)
        >>> random_shift(fdl.random.key(0), x, 2).shape
        torch.Size([4, 1, 28, 28])
    """
    _check_images(x, "random_shift")
    if max_shift < 0:
        raise ValueError(f"random_shift: max_shift must be >= 0, got {max_shift}")
    return random_crop(key, x, (x.shape[2], x.shape[3]), padding=max_shift, fill=fill)


def random_flip(key: _random.Key, x: torch.Tensor, p: float = 0.5, dim: int = -1) -> torch.Tensor:
    """Flip each sample along ``dim`` with probability ``p`` (``-1``: horizontal for NCHW).

    Example:
        >>> import torch, fdl
        >>> x = torch.arange(3.0).reshape(1, 1, 1, 3)
        >>> random_flip(fdl.random.key(0), x, p=1.0)
        tensor([[[[2., 1., 0.]]]])
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_flip: p must be in [0, 1], got {p}")
    if x.ndim < 2 or dim % x.ndim == 0:
        raise ValueError(
            f"random_flip: dim {dim} must be a non-batch axis of shape {tuple(x.shape)}"
        )
    flip = _random.bernoulli(key, p, (x.shape[0],)).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.where(flip, x.flip(dim), x)


def gaussian_noise(
    key: _random.Key,
    x: torch.Tensor,
    std: float,
    clip: tuple[float, float] | None = None,
) -> torch.Tensor:
    """``x + std * z`` with ``z ~ N(0, 1)`` drawn from ``key``; optionally clamped to ``clip``.

    Example:
        >>> import torch, fdl
        >>> y = gaussian_noise(fdl.random.key(0), torch.zeros(1000), 0.1, clip=(0.0, 1.0))
        >>> float(y.min()) >= 0.0
        True
    """
    if std < 0:
        raise ValueError(f"gaussian_noise: std must be >= 0, got {std}")
    out = x + std * _random.normal(key, tuple(x.shape), dtype=x.dtype)
    if clip is not None:
        out = out.clamp(clip[0], clip[1])
    return out


# --------------------------------------------------------------------------- batching and splits


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for ``n`` samples.

    Example:
        >>> num_batches(10, 4), num_batches(10, 4, drop_last=True)
        (3, 2)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    *arrays: torch.Tensor,
    batch_size: int,
    key: _random.Key | None = None,
    drop_last: bool = False,
    pad: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Split tensors along their first axis into batches, shuffled when ``key`` is given.

    With a ``key`` the order is ``fdl.random.permutation(key, n)``: the same key
    gives the same batches. For a new order every epoch and the same one on
    every run, pass ``fdl.random.fold_in(key, epoch)``.

    With ``pad=True`` every batch has exactly ``batch_size`` rows and a float
    weight vector is appended: 1 for real samples, 0 for padding (copies of the
    first sample of the order). A compiled step then sees one shape throughout,
    and ``(loss * weight).sum() / weight.sum()`` is the mean over real samples.

    Args:
        *arrays: tensors with a common leading size ``n``.
        batch_size: rows per batch.
        key: shuffle with this key; ``None`` keeps the order.
        drop_last: drop the final partial batch (ignored with ``pad``).
        pad: pad the final partial batch and append the weight vector.

    Returns:
        An iterator of tuples ``(a0[idx], a1[idx], ...)`` (plus ``weight`` with ``pad``).

    Example:
        >>> import torch
        >>> x = torch.arange(5.0)
        >>> [w.tolist() for _, w in batches(x, batch_size=3, pad=True)]
        [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    """
    n = leading_size(arrays)
    count = num_batches(n, batch_size, drop_last and not pad)
    device = arrays[0].device
    order = _random.permutation(key, n).to(device) if key is not None else None
    if order is None:
        order = torch.arange(n, device=device)
    for b in range(count):
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        idx = order[lo:hi]
        if not pad:
            yield tuple(a[idx] for a in arrays)
            continue
        weight = torch.zeros(batch_size, device=device)
        weight[: hi - lo] = 1.0
        # pad the final partial batch with copies of its first sample
        idx = torch.cat([idx, idx[:1].expand(batch_size - (hi - lo))])
        yield (*(a[idx] for a in arrays), weight)


def train_val_split(
    key: _random.Key | None,
    n: int,
    *,
    val_fraction: float | None = None,
    val_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random disjoint train and validation index sets covering ``range(n)``.

    Give exactly one of ``val_fraction`` (``val_size = round(n * val_fraction)``)
    or ``val_size``. ``key=None`` takes the last ``val_size`` indices unshuffled.

    Returns:
        ``(train_idx, val_idx)``, int64 tensors.

    Example:
        >>> import fdl
        >>> tr, va = train_val_split(fdl.random.key(0), 10, val_fraction=0.2)
        >>> len(tr), len(va)
        (8, 2)
    """
    if (val_fraction is None) == (val_size is None):
        raise ValueError("train_val_split: give exactly one of val_fraction or val_size")
    if val_fraction is not None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction}")
        val_size = round(n * val_fraction)
    assert val_size is not None
    if not 0 < val_size < n:
        raise ValueError(
            f"train_val_split: val_size must be in [1, {n - 1}] for n={n}, got {val_size}"
        )
    order = _random.permutation(key, n) if key is not None else torch.arange(n)
    return order[: n - val_size], order[n - val_size :]


def kfold(key: _random.Key | None, n: int, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``k`` (train, validation) index splits whose validation folds partition ``range(n)``.

    The indices are shuffled with ``fdl.random.permutation(key, n)`` (kept in
    order for ``key=None``) and cut into ``k`` folds; the first ``n % k`` folds
    hold one extra index (as scikit-learn's ``KFold``). Fold ``i`` validates on
    its own indices and trains on all the others.

    Raises:
        ValueError: ``k < 2`` or ``k > n``.

    Example:
        >>> [val.tolist() for _, val in kfold(None, 5, 2)]
        [[0, 1, 2], [3, 4]]
    """
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"kfold: k must be an integer >= 2, got {k!r}")
    if k > n:
        raise ValueError(f"kfold: k={k} folds need at least k samples, got n={n}")
    order = _random.permutation(key, n) if key is not None else torch.arange(n)
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    folds = list(torch.split(order, sizes))
    return [(torch.cat(folds[:i] + folds[i + 1 :]), folds[i]) for i in range(k)]
