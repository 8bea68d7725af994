"""Tests for fdl.random: the cipher, keys, samplers and their distributions."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import permutations

import pytest
import torch
from _doc_examples import run_python_blocks
from scipy import stats

from fdl import random as R

I64 = torch.int64

# Threefry-2x32 with 20 rounds, Random123 known-answer vectors:
# (key words, counter words, expected ciphertext words).
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]

# Every sampler as a function of the key alone (name -> fn). Generic properties
# (determinism, purity, key sensitivity, vmap, compile) are checked for each.
SAMPLERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "split": lambda k: R.split(k, 3),
    "fold_in": lambda k: R.fold_in(k, 7),
    "bits": lambda k: torch.stack(R.bits(k, (2, 3))),
    "uniform_f32": lambda k: R.uniform(k, (5, 7)),
    "uniform_f64": lambda k: R.uniform(k, (33,), dtype=torch.float64),
    "uniform_f16": lambda k: R.uniform(k, (9,), dtype=torch.float16),
    "uniform_range": lambda k: R.uniform(k, (9,), -2.0, 3.0),
    "normal_f32": lambda k: R.normal(k, (4, 5)),
    "normal_f64": lambda k: R.normal(k, (11,), dtype=torch.float64),
    "bernoulli": lambda k: R.bernoulli(k, 0.3, (17,)),
    "bernoulli_tensor_p": lambda k: R.bernoulli(k, torch.linspace(0, 1, 8)),
    "randint": lambda k: R.randint(k, (19,), -5, 6),
    "permutation": lambda k: R.permutation(k, 10),
}
NAMES = sorted(SAMPLERS)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Many small integer ops: on a shared, oversubscribed CPU, intra-op threads
    # only wait for each other. The numbers do not depend on the thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _t(v: int | list[int]) -> torch.Tensor:
    return torch.tensor(v, dtype=I64)


# ---------------------------------------------------------------------------
# The cipher
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "c", "expected"), KAT)
def test_threefry_known_answers(k, c, expected):
    y0, y1 = R.threefry2x32(_t(k[0]), _t(k[1]), _t(c[0]), _t(c[1]))
    assert (int(y0), int(y1)) == expected


def test_threefry_broadcasts_like_elementwise_calls():
    k0, k1 = _t(0x13198A2E), _t(0x03707344)
    x0, x1 = _t([0, 1, 2**32 - 1]), _t([[5], [6]])
    y0, y1 = R.threefry2x32(k0, k1, x0, x1)
    assert y0.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            e0, e1 = R.threefry2x32(k0, k1, x0[j], x1[i, 0])
            assert (int(y0[i, j]), int(y1[i, j])) == (int(e0), int(e1))


def test_threefry_numpy_and_torch_paths_agree():
    # CPU runs the cipher in numpy uint32; other devices in torch int64 ops
    g = torch.Generator().manual_seed(0)
    args = [torch.randint(0, 2**32, s, generator=g) for s in [(3, 1), (1,), (4,), (3, 4)]]
    for a, b in zip(R._threefry2x32_numpy(*args), R._threefry2x32_impl(*args), strict=True):
        assert a.dtype == b.dtype == I64 and a.shape == b.shape == (3, 4)
        assert torch.equal(a, b)


def test_threefry_rejects_other_dtypes():
    z = _t(0)
    with pytest.raises(TypeError, match="x1 must be an int64 tensor"):
        R.threefry2x32(z, z, z, torch.zeros((), dtype=torch.int32))


def test_threefry_matches_jax():
    jr = pytest.importorskip("jax.extend.random")
    np = pytest.importorskip("numpy")
    key, counts = [0x13198A2E, 0x03707344], list(range(10))
    expected = [int(v) for v in jr.threefry_2x32(np.uint32(key), np.uint32(counts))]
    # jax splits the counts into halves: x0 = counts[:5], x1 = counts[5:]
    y0, y1 = R.threefry2x32(_t(key[0]), _t(key[1]), _t(counts[:5]), _t(counts[5:]))
    assert y0.tolist() + y1.tolist() == expected


def test_key_layout():
    assert R.key(0).tolist() == [0, 0]
    assert R.key(2**32 + 5).tolist() == [1, 5]
    assert R.key(-1).tolist() == [2**32 - 1, 2**32 - 1]
    assert torch.equal(R.key(torch.tensor(2**40 + 3)), R.key(2**40 + 3))


# ---------------------------------------------------------------------------
# Generic properties, over every sampler
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_pure(name):
    k = R.key(42)
    before = k.clone()
    a, b = SAMPLERS[name](k), SAMPLERS[name](k)
    assert torch.equal(a, b)
    assert torch.equal(k, before)


@pytest.mark.parametrize("name", NAMES)
def test_different_keys_give_different_numbers(name):
    a, b = SAMPLERS[name](R.key(0)), SAMPLERS[name](R.key(1))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_keys_equals_loop(name):
    keys = R.split(R.key(3), 4)
    batched = torch.func.vmap(SAMPLERS[name])(keys)
    looped = torch.stack([SAMPLERS[name](k) for k in keys])
    assert torch.equal(batched, looped)


def _all_samplers(k: torch.Tensor, step: torch.Tensor) -> list[torch.Tensor]:
    # every sampler, plus a per-step key derived from a step-count tensor
    return [SAMPLERS[n](k) for n in NAMES] + [R.normal(R.fold_in(k, step), (3,))]


@pytest.fixture(scope="module")
def compiled_all():
    torch._dynamo.reset()
    return torch.compile(_all_samplers, fullgraph=True)


@pytest.mark.parametrize("seed", [5, 6])
def test_compile_equals_eager_without_recompiling(compiled_all, seed):
    args = (R.key(seed), torch.tensor(seed * 10))
    if seed == 6:  # new key and step: must reuse the graph compiled for the first
        with torch.compiler.set_stance("fail_on_recompile"):
            got = compiled_all(*args)
    else:
        got = compiled_all(*args)
    names = [*NAMES, "fold_in_step_tensor"]
    for name, g, e in zip(names, got, _all_samplers(*args), strict=True):
        assert torch.equal(g, e), name


def test_vmap_inside_compile_equals_loop(compiled_all):
    fn = torch.compile(torch.func.vmap(lambda k: R.normal(k, (6,))), fullgraph=True)
    keys = R.split(R.key(9), 3)
    assert torch.equal(fn(keys), torch.stack([R.normal(k, (6,)) for k in keys]))


# ---------------------------------------------------------------------------
# Keys: split and fold_in
# ---------------------------------------------------------------------------


def test_split_keys_distinct_and_reproducible():
    ks = R.split(R.key(0), 1000)
    assert ks.shape == (1000, 2) and ks.dtype == I64
    assert len({tuple(k) for k in ks.tolist()}) == 1000
    assert torch.equal(ks[:10], R.split(R.key(0), 1000)[:10])
    assert bool(((ks >= 0) & (ks < 2**32)).all())


def test_split_streams_uncorrelated():
    n = 20000
    ks = R.split(R.key(1), 8)
    u = torch.stack([R.uniform(k, (n,), dtype=torch.float64) for k in ks])
    corr = torch.corrcoef(u)
    off = corr[~torch.eye(8, dtype=torch.bool)]
    # sd of a sample correlation is 1/sqrt(n)
    assert float(off.abs().max()) < 5 / math.sqrt(n)
    # no stream repeats another, even shifted by one
    assert not any(torch.equal(u[i, 1:], u[j, :-1]) for i in range(8) for j in range(8))


def test_fold_in_is_apart_from_split():
    k = R.key(0)
    ks = R.split(k, 16)
    folded = torch.stack([R.fold_in(k, i) for i in range(16)])
    assert not bool((folded[:, None, :] == ks[None, :, :]).all(-1).any())
    assert len({tuple(f) for f in folded.tolist()}) == 16
    assert torch.equal(R.fold_in(k, torch.tensor(3)), R.fold_in(k, 3))
    # vmap over the data (e.g. a batch of example indices)
    batched = torch.func.vmap(lambda d: R.fold_in(k, d))(torch.arange(16))
    assert torch.equal(batched, folded)


# ---------------------------------------------------------------------------
# Distributions
# ---------------------------------------------------------------------------

N = 100_000
FLOATS = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", FLOATS)
def test_uniform_distribution(dtype):
    u = R.uniform(R.key(10), (N,), dtype=dtype)
    assert u.dtype == dtype and u.shape == (N,)
    assert bool((u >= 0).all() and (u < 1).all())
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / N)
    assert abs(float(u.var()) - 1 / 12) < 0.002
    assert stats.kstest(u.double().numpy(), "uniform").pvalue > 1e-3
    # float64 uses 53 bits: values are not on the float32 grid
    if dtype == torch.float64:
        assert bool((u != u.float().double()).any())


@pytest.mark.parametrize("dtype", FLOATS)
def test_uniform_range(dtype):
    u = R.uniform(R.key(11), (N,), -3.0, 5.0, dtype=dtype)
    assert bool((u >= -3).all() and (u < 5).all())
    assert stats.kstest(u.double().numpy(), "uniform", args=(-3.0, 8.0)).pvalue > 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_uniform_low_precision_stays_below_one(dtype):
    u = R.uniform(R.key(12), (N,), dtype=dtype)
    assert u.dtype == dtype
    assert bool((u >= 0).all() and (u < 1).all())
    assert abs(float(u.float().mean()) - 0.5) < 0.01


def test_uniform_empty_interval_gives_low():
    assert torch.equal(R.uniform(R.key(0), (3,), 2.0, 2.0), torch.full((3,), 2.0))


def test_uniform_never_reaches_high_after_rounding():
    high = 1.0 + 2**-20
    u = R.uniform(R.key(13), (N,), 1.0, high)
    assert bool((u >= 1.0).all() and (u < high).all())


@pytest.mark.parametrize("dtype", FLOATS)
def test_normal_distribution(dtype):
    z = R.normal(R.key(20), (N,), dtype=dtype)
    assert z.dtype == dtype and bool(torch.isfinite(z).all())
    zd = z.double()
    assert abs(float(zd.mean())) < 5 / math.sqrt(N)
    assert abs(float(zd.var()) - 1) < 5 * math.sqrt(2 / N)
    assert abs(float(stats.skew(zd.numpy()))) < 5 * math.sqrt(6 / N)
    assert abs(float(stats.kurtosis(zd.numpy()))) < 5 * math.sqrt(24 / N)
    assert stats.kstest(zd.numpy(), "norm").pvalue > 1e-3


def test_normal_tails_are_bounded_and_symmetric():
    # v = (2m + 1 - 2**b) * 2**-b never reaches +-1, so z is finite; its grid is
    # symmetric about 0, so the extreme words map to opposite values.
    for dtype, b, bound in [(torch.float32, 24, 5.5), (torch.float64, 53, 8.3)]:
        z = R.normal(R.key(21), (N,), dtype=dtype)
        assert float(z.abs().max()) < bound
        v = torch.tensor([1 - 2**b, 2**b - 1], dtype=I64).to(dtype) * 2.0**-b
        lo, hi = (math.sqrt(2) * torch.erfinv(v)).tolist()
        assert lo == -hi and math.isfinite(hi) and bound - 0.2 < hi < bound


def test_normal_mean_std():
    z = R.normal(R.key(22), (N,), mean=3.0, std=0.5, dtype=torch.float64)
    assert stats.kstest(z.numpy(), "norm", args=(3.0, 0.5)).pvalue > 1e-3
    zt = R.normal(R.key(22), (2, 3), mean=torch.tensor([[0.0], [10.0]]))
    assert float(zt[1].mean()) > 5


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_bernoulli_rate(p):
    b = R.bernoulli(R.key(30), p, (N,))
    assert b.dtype == torch.bool
    rate = float(b.double().mean())
    assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / N)


def test_bernoulli_tensor_p_broadcasts():
    p = torch.tensor([0.2, 0.8], dtype=torch.float64)
    b = R.bernoulli(R.key(31), p, (N, 2))
    rates = b.double().mean(0)
    assert torch.allclose(rates, p, atol=0.01)


@pytest.mark.parametrize(("low", "high"), [(0, 10), (-7, 6), (2**40, 2**40 + 3)])
def test_randint_range_and_uniformity(low, high):
    r = R.randint(R.key(40), (N,), low, high)
    assert r.dtype == I64
    assert int(r.min()) == low and int(r.max()) == high - 1
    counts = torch.bincount(r - low, minlength=high - low).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_randint_dtype():
    assert R.randint(R.key(0), (3,), 0, 100, dtype=torch.int32).dtype == torch.int32


def test_permutation_is_a_permutation():
    for n in (0, 1, 2, 17, 1000):
        p = R.permutation(R.key(n), n)
        assert p.dtype == I64
        assert sorted(p.tolist()) == list(range(n))


def test_permutation_uniform_over_all_orders():
    n, trials = 4, 4800
    perms = torch.func.vmap(lambda k: R.permutation(k, n))(R.split(R.key(50), trials))
    index = {p: i for i, p in enumerate(permutations(range(n)))}
    counts = torch.zeros(len(index))
    for row in perms.tolist():
        counts[index[tuple(row)]] += 1
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3


def test_bits_are_uniform_words():
    hi, lo = R.bits(R.key(60), (N,))
    for w in (hi, lo):
        assert bool(((w >= 0) & (w < 2**32)).all())
        bit_rates = torch.stack([((w >> b) & 1).double().mean() for b in range(32)])
        assert float((bit_rates - 0.5).abs().max()) < 5 * math.sqrt(0.25 / N)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

BAD_KEYS = [
    (torch.zeros(2), TypeError, "int64"),
    (torch.zeros(2, dtype=torch.int32), TypeError, "int64"),
    ([0, 0], TypeError, "int64"),
    (torch.zeros(3, dtype=I64), ValueError, r"shape \(2,\)"),
    (torch.zeros(4, 2, dtype=I64), ValueError, "vmap"),
]


@pytest.mark.parametrize(("bad", "err", "match"), BAD_KEYS)
@pytest.mark.parametrize("name", NAMES)
def test_bad_keys_rejected(name, bad, err, match):
    with pytest.raises(err, match=match):
        SAMPLERS[name](bad)


@pytest.mark.parametrize(
    ("call", "err", "match"),
    [
        (lambda k: R.split(k, 0), ValueError, "num >= 1"),
        (lambda k: R.split(k, -2), ValueError, "num >= 1"),
        (lambda k: R.split(k, 2.0), ValueError, "num >= 1"),
        (lambda k: R.randint(k, (3,), 5, 5), ValueError, "low < high"),
        (lambda k: R.randint(k, (3,), 5, 2), ValueError, "low < high"),
        (lambda k: R.randint(k, (3,), 0.0, 2), TypeError, "low must be an int"),
        (lambda k: R.randint(k, (3,), 0, 2**63), ValueError, "2\\*\\*62"),
        (lambda k: R.randint(k, (3,), 0, 2, dtype=torch.float32), TypeError, "integer dtype"),
        (lambda k: R.uniform(k, (3,), 2.0, 1.0), ValueError, "low <= high"),
        (lambda k: R.uniform(k, (3,), dtype=torch.int64), TypeError, "float"),
        (lambda k: R.normal(k, (3,), std=-1.0), ValueError, "std >= 0"),
        (lambda k: R.bernoulli(k, 1.5, (3,)), ValueError, "0 <= p <= 1"),
        (lambda k: R.permutation(k, -1), ValueError, "n >= 0"),
        (lambda k: R.uniform(k, (2, -1)), ValueError, "non-negative"),
        (lambda k: R.fold_in(k, 1.5), TypeError, "int"),
        (lambda k: R.key(1.5), TypeError, "int"),
        (lambda k: R.key(torch.tensor(1.0)), TypeError, "integer tensor"),
    ],
)
def test_bad_arguments_rejected(call, err, match):
    with pytest.raises(err, match=match):
        call(R.key(0))


def test_docs_examples_run():
    """Every ```python block of docs/random.md runs, in order, in one namespace."""
    run_python_blocks("random.md")
