"""Randomness that must reach everywhere it is promised: random_crop draws every offset of
the padded image (each equally often), and fit draws a fresh batch order and fresh keys in
every epoch (while staying reproducible for one key)."""

from __future__ import annotations

import torch

import fdl
from fdl import data


def test_random_crop_draws_every_offset_uniformly():
    n, size, pad = 3000, 4, 1
    # pixel (r, c) of every image holds 1 + 4 r + c; the padding holds 0
    x = (1.0 + torch.arange(size * size, dtype=torch.float64)).reshape(1, 1, size, size)
    out = data.random_crop(fdl.random.key(0), x.expand(n, 1, size, size), size, padding=pad)
    v = out[:, 0, 1, 1].long() - 1  # crop pixel (1, 1) is padded (top + 1, left + 1)
    top, left = v // size, v % size
    offsets = 2 * pad + 1
    for t in (top, left):
        counts = torch.bincount(t, minlength=offsets)
        assert counts.numel() == offsets, counts
        # each offset is drawn with probability 1/3: 1000 expected, sd ~26
        assert bool((counts > n / offsets - 150).all()), counts


def _record_fit(epochs: int, key_seed: int = 0):
    model = fdl.nn.Linear(3, 2)
    x = fdl.random.normal(fdl.random.key(1), (24, 3))
    y = torch.arange(24) % 2
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def augment(k, xb):
        seen.append((k.clone(), xb.clone()))
        return xb

    fdl.train.fit(
        model.apply,
        fdl.losses.cross_entropy,
        fdl.optim.sgd(lr=0.1),
        model.init(fdl.random.key(2)),
        (x, y),
        key=fdl.random.key(key_seed),
        epochs=epochs,
        batch_size=8,
        augment=augment,
        compile=False,
        progress=False,
    )
    return seen


def test_fit_draws_a_fresh_order_and_fresh_keys_every_epoch():
    seen = _record_fit(epochs=2)
    assert len(seen) == 6  # 3 steps per epoch
    first = torch.cat([xb for _, xb in seen[:3]])
    second = torch.cat([xb for _, xb in seen[3:]])
    # both epochs see every example once, in different orders
    assert torch.equal(first.sort(0).values, second.sort(0).values)
    assert not torch.equal(first, second)
    keys = {tuple(k.tolist()) for k, _ in seen}
    assert len(keys) == 6, "a step key repeats across epochs"
    # and one key reproduces the whole run
    again = _record_fit(epochs=2)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(seen, again, strict=True))
