"""fdl.ensemble: a vmapped ensemble step equals training the members one after another."""

from __future__ import annotations

import pytest
import torch

import fdl
import fdl.data
import fdl.ensemble as fe
import fdl.losses
import fdl.nn
import fdl.optim
from fdl.testing import assert_pure, assert_trees_close
from fdl.train import make_train_step, predict

# (name, fdl optimizer) — every generic ensemble property runs over each entry
OPTIMIZERS = [
    ("sgd_momentum", fdl.optim.sgd(lr=0.1, momentum=0.9)),
    ("adam", fdl.optim.adam(lr=1e-2)),
    ("adamw", fdl.optim.adamw(lr=1e-2, weight_decay=0.1)),
    ("rmsprop", fdl.optim.rmsprop(lr=1e-2)),
]
OPT_IDS = [name for name, _ in OPTIMIZERS]

K, N_FEATURES, N_CLASSES, BATCH, STEPS = 3, 6, 4, 8, 4
MODEL = fdl.nn.Sequential(
    fdl.nn.Linear(N_FEATURES, 16), fdl.nn.ReLU(), fdl.nn.Linear(16, N_CLASSES)
)


def mlp_apply(params, x):
    """MODEL's forward pass written with plain kernels (independent of fdl.nn's apply)."""
    h = torch.relu(x @ params["0"]["weight"].T + params["0"]["bias"])
    return h @ params["2"]["weight"].T + params["2"]["bias"]


def weighted_loss(params, x, y, w):
    """Mean cross-entropy over the real (weight 1) samples of a padded batch."""
    per = fdl.losses.cross_entropy(mlp_apply(params, x), y, reduction="none")
    return (per * w).sum() / w.sum().clamp_min(1)


def plain_loss(params, x, y):
    return fdl.losses.cross_entropy(mlp_apply(params, x), y)


def _data(n: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    return x, y


def _members():
    return [MODEL.init(k) for k in fdl.random.split(fdl.random.key(1), K)]


def _per_member_batches(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(STEPS, K, BATCH, N_FEATURES, generator=g)
    ys = torch.randint(0, N_CLASSES, (STEPS, K, BATCH), generator=g)
    return xs, ys


def _sequential(opt, members, xs, ys):
    """Train each member alone with fdl.train's ordinary step, one after another."""
    step = make_train_step(plain_loss, opt, compile=False)
    out, losses = [], []
    for k, p in enumerate(members):
        s = opt.init(p)
        member_losses = []
        for t in range(xs.shape[0]):
            p, s, loss = step(p, s, xs[t, k], ys[t, k])
            member_losses.append(loss)
        out.append((p, s))
        losses.append(torch.stack(member_losses))
    return out, torch.stack(losses, dim=1)  # losses (STEPS, K)


def _run_ensemble(step, opt, members, xs, ys):
    params = fe.init(MODEL.init, fdl.random.split(fdl.random.key(1), K))
    assert_trees_close(params, fdl.tree.stack(members))
    state = fe.init_optimizer(opt, params)
    losses = []
    for t in range(xs.shape[0]):
        params, state, loss = step(params, state, xs[t], ys[t])
        losses.append(loss)
    return params, state, torch.stack(losses)


# ---------------------------------------------------------------------------
# Ensemble equals sequential training
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,opt", OPTIMIZERS, ids=OPT_IDS)
def test_eager_ensemble_equals_sequential(name, opt):
    members = _members()
    xs, ys = _per_member_batches()
    step = fe.make_ensemble_train_step(plain_loss, opt, compile=False)
    params, state, losses = _run_ensemble(step, opt, members, xs, ys)
    expected, expected_losses = _sequential(opt, members, xs, ys)
    for k, (p, s) in enumerate(expected):
        assert_trees_close(fdl.tree.unstack(params)[k], p, rtol=1e-5, atol=1e-6)
        assert_trees_close(fdl.tree.unstack(state)[k], s, rtol=1e-5, atol=1e-6)
    assert_trees_close(losses, expected_losses, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def compiled_adam_step():
    """One compiled ensemble step (adam) shared by the compile tests."""
    opt = fdl.optim.adam(lr=1e-2)
    return opt, fe.make_ensemble_train_step(plain_loss, opt, compile=True)


def test_compiled_ensemble_equals_sequential_and_never_recompiles(compiled_adam_step):
    opt, step = compiled_adam_step
    members = _members()
    xs, ys = _per_member_batches()
    params = fdl.tree.stack(members)
    state = fe.init_optimizer(opt, params)
    params, state, loss0 = step(params, state, xs[0], ys[0])  # compiles here
    losses = [loss0]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for t in range(1, STEPS):
            params, state, loss = step(params, state, xs[t], ys[t])
            losses.append(loss)
    expected, expected_losses = _sequential(opt, members, xs, ys)
    for k, (p, s) in enumerate(expected):
        assert_trees_close(fdl.tree.unstack(params)[k], p, rtol=1e-5, atol=1e-6)
        assert_trees_close(fdl.tree.unstack(state)[k], s, rtol=1e-5, atol=1e-6)
    assert_trees_close(torch.stack(losses), expected_losses, rtol=1e-5, atol=1e-6)


def test_compiled_step_with_active_mask():
    """The ``active`` path traces with fullgraph=True and freezes exactly the inactive member.

    (Traced by dynamo and AOT autograd without inductor code generation, to keep the test fast;
    inductor numerics are covered by the test above.)
    """
    opt = fdl.optim.adam(lr=1e-2)
    step = fe.make_ensemble_train_step(plain_loss, opt, compile={"backend": "aot_eager"})
    params = fdl.tree.stack(_members())
    state = fe.init_optimizer(opt, params)
    xs, ys = _per_member_batches()
    active = torch.tensor([True, False, True])
    new_p, new_s, _ = step(params, state, xs[0], ys[0], active=active)
    eager = fe.make_ensemble_train_step(plain_loss, opt, compile=False)
    exp_p, exp_s, _ = eager(params, state, xs[0], ys[0], active=active)
    assert_trees_close((new_p, new_s), (exp_p, exp_s), rtol=1e-5, atol=1e-6)
    assert_trees_close(fdl.tree.unstack(new_p)[1], fdl.tree.unstack(params)[1], rtol=0, atol=0)


def test_compiled_step_is_pure(compiled_adam_step):
    opt, step = compiled_adam_step
    params = fdl.tree.stack(_members())
    xs, ys = _per_member_batches()
    assert_pure(step, params, fe.init_optimizer(opt, params), xs[0], ys[0])


@pytest.mark.parametrize("name,opt", OPTIMIZERS[:2], ids=OPT_IDS[:2])
def test_kfold_ensemble_with_masks_equals_sequential(name, opt):
    """Members on their own folds (unequal sizes, padding, inactive steps) = separate training."""
    x, y = _data(n=23)
    folds = fdl.data.kfold(fdl.random.key(3), 23, K)  # train sizes 15, 15, 16
    train_sets = [tr for tr, _ in folds]
    batch, epochs = 5, 2
    members = _members()

    step = fe.make_ensemble_train_step(weighted_loss, opt, compile=False)
    params = fdl.tree.stack(members)
    state = fe.init_optimizer(opt, params)
    inactive_seen = False
    for epoch in range(epochs):
        key = fdl.random.fold_in(fdl.random.key(4), epoch)
        for idx, w, active in fe.fold_batches(key, train_sets, batch):
            inactive_seen |= not bool(active.all())
            params, state, _ = step(params, state, x[idx], y[idx], w, active=active)
    assert inactive_seen  # the 16-sample member needs a 4th batch, the others do not

    single = make_train_step(weighted_loss, opt, compile=False)
    for k, (p, tr) in enumerate(zip(members, train_sets, strict=True)):
        s = opt.init(p)
        for epoch in range(epochs):
            key = fdl.random.fold_in(fdl.random.fold_in(fdl.random.key(4), epoch), k)
            for xb, yb, wb in fdl.data.batches(x[tr], y[tr], batch_size=batch, key=key, pad=True):
                p, s, _ = single(p, s, xb, yb, wb)
        assert_trees_close(fdl.tree.unstack(params)[k], p, rtol=1e-5, atol=1e-6)
        assert_trees_close(fdl.tree.unstack(state)[k], s, rtol=1e-5, atol=1e-6)


def test_shared_data_with_per_member_weights():
    """batch_axes=(None, None, 0): one batch for all, each member weighting its own samples."""
    opt = fdl.optim.sgd(lr=0.1)
    x, y = _data(n=BATCH)
    w = (torch.arange(K)[:, None] != torch.arange(BATCH)[None] % K).float()  # (K, B)
    members = _members()
    step = fe.make_ensemble_train_step(
        weighted_loss, opt, batch_axes=(None, None, 0), compile=False
    )
    params, _, loss = step(
        fdl.tree.stack(members), fe.init_optimizer(opt, fdl.tree.stack(members)), x, y, w
    )
    single = make_train_step(weighted_loss, opt, compile=False)
    for k, p in enumerate(members):
        p1, _, l1 = single(p, opt.init(p), x, y, w[k])
        assert_trees_close(fdl.tree.unstack(params)[k], p1)
        assert_trees_close(loss[k], l1)


def test_has_aux_returns_stacked_aux():
    opt = fdl.optim.sgd(lr=0.1)

    def loss_aux(params, x, y):
        logits = MODEL.apply(params, x)
        return fdl.losses.cross_entropy(logits, y), {"logits": logits}

    xs, ys = _per_member_batches()
    params = fdl.tree.stack(_members())
    step = fe.make_ensemble_train_step(loss_aux, opt, has_aux=True, compile=False)
    _, _, loss, aux = step(params, fe.init_optimizer(opt, params), xs[0], ys[0])
    assert loss.shape == (K,)
    assert_trees_close(aux["logits"], fe.ensemble_apply(MODEL.apply, params, xs[0], x_axis=0))


def _eager_adam_setup():
    """An eager adam ensemble step, its stacked params and state, and per-member batches."""
    opt = fdl.optim.adam(lr=0.1)
    params = fdl.tree.stack(_members())
    xs, ys = _per_member_batches()
    step = fe.make_ensemble_train_step(plain_loss, opt, compile=False)
    return opt, params, fe.init_optimizer(opt, params), xs, ys, step


def test_inactive_member_is_frozen():
    opt, params, state, xs, ys, step = _eager_adam_setup()
    active = torch.tensor([True, False, True])
    new_p, new_s, _ = step(params, state, xs[0], ys[0], active=active)
    assert_trees_close(fdl.tree.unstack(new_p)[1], fdl.tree.unstack(params)[1], rtol=0, atol=0)
    assert_trees_close(fdl.tree.unstack(new_s)[1], fdl.tree.unstack(state)[1], rtol=0, atol=0)
    assert not fdl.tree.allclose(fdl.tree.unstack(new_p)[0], fdl.tree.unstack(params)[0])


# ---------------------------------------------------------------------------
# Folds and batches
# ---------------------------------------------------------------------------


def test_fold_batches_partition_each_members_indices():
    sets = [torch.arange(0, 7), torch.arange(10, 20), torch.arange(30, 33)]
    key = fdl.random.key(5)
    out = list(fe.fold_batches(key, sets, 4))
    assert len(out) == 3  # ceil(10 / 4)
    for k, s in enumerate(sets):
        seen = torch.cat([idx[k][w[k] > 0] for idx, w, _ in out])
        assert sorted(seen.tolist()) == s.tolist()
        expected_order = s[fdl.random.permutation(fdl.random.fold_in(key, k), len(s))]
        assert seen.tolist() == expected_order.tolist()
        pads = torch.cat([idx[k][w[k] == 0] for idx, w, _ in out])
        assert set(pads.tolist()) <= set(s.tolist())  # padding repeats a real index
    assert [a.tolist() for _, _, a in out] == [
        [True] * 3,
        [True, True, False],
        [False, True, False],
    ]
    again = list(fe.fold_batches(key, sets, 4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(out, again, strict=True))


def test_kfold_folds_partition_and_masks():
    n, k = 23, 5
    folds = fdl.data.kfold(fdl.random.key(6), n, k)
    masks = fe.fold_masks(folds, n)
    assert masks.shape == (k, n)
    assert masks.sum(0).tolist() == [1] * n  # every index validates in exactly one fold
    for (tr, va), m in zip(folds, masks, strict=True):
        assert sorted(torch.cat([tr, va]).tolist()) == list(range(n))
        assert not set(tr.tolist()) & set(va.tolist())
        assert sorted(va.tolist()) == m.nonzero().flatten().tolist()
    again = fdl.data.kfold(fdl.random.key(6), n, k)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))


# ---------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [7, 64])
def test_ensemble_predict_averages_member_probabilities(batch_size):
    x, _ = _data(n=30)
    members = _members()
    params = fdl.tree.stack(members)
    probs = fe.ensemble_predict(MODEL.apply, params, x, batch_size)
    per_member = torch.stack([predict(MODEL.apply, p, x, 8, output="probs") for p in members])
    torch_probs = torch.stack([torch.softmax(MODEL.apply(p, x), 1) for p in members]).mean(0)
    assert probs.shape == (30, N_CLASSES)
    assert_trees_close(probs, per_member.mean(0))
    assert_trees_close(probs, torch_probs)
    classes = fe.ensemble_predict(MODEL.apply, params, x, batch_size, output="classes")
    assert torch.equal(classes, torch_probs.argmax(1))
    logits = fe.ensemble_predict(MODEL.apply, params, x, batch_size, output="member_logits")
    assert_trees_close(logits, torch.stack([MODEL.apply(p, x) for p in members]))


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 24])
def test_kfold_bad_k_raises(k):
    with pytest.raises(ValueError, match="k"):
        fdl.data.kfold(fdl.random.key(0), 23, k)


def test_mismatched_ensemble_sizes_raise():
    opt, params, state, xs, ys, step = _eager_adam_setup()
    with pytest.raises(
        ValueError, match=r"batch argument 0 needs a leading ensemble axis of size K = 3.*size 2"
    ):
        step(params, state, xs[0, :2], ys[0])
    short_state = fdl.tree.stack(fdl.tree.unstack(state)[:2])
    with pytest.raises(ValueError, match=r"opt_state.*K = 3.*size 2"):
        step(params, short_state, xs[0], ys[0])
    with pytest.raises(ValueError, match=r"active must be a bool tensor of shape \(K,\) = \(3,\)"):
        step(params, state, xs[0], ys[0], active=torch.ones(2, dtype=torch.bool))
    bad = dict(params)
    bad["2"] = {"weight": params["2"]["weight"][:2], "bias": params["2"]["bias"]}
    with pytest.raises(ValueError, match=r"leaf '2.weight' has leading size 2, expected K = 3"):
        step(bad, state, xs[0], ys[0])
    axes_step = fe.make_ensemble_train_step(plain_loss, opt, batch_axes=(0,), compile=False)
    with pytest.raises(ValueError, match="batch_axes has 1 entries but the step got 2"):
        axes_step(params, state, xs[0], ys[0])


def test_fold_helpers_bad_input_raise():
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        next(fe.fold_batches(fdl.random.key(0), [torch.arange(3)], 0))
    with pytest.raises(ValueError, match=r"train_indices\[1\] must be a non-empty 1-d"):
        next(fe.fold_batches(fdl.random.key(0), [torch.arange(3), torch.arange(0)], 2))
    with pytest.raises(ValueError, match=r"outside \[0, 4\]"):
        fe.fold_masks([(torch.arange(2), torch.tensor([5]))], 5)
    with pytest.raises(ValueError, match="output must be one of"):
        fe.ensemble_predict(
            MODEL.apply, fdl.tree.stack(_members()), torch.ones(2, 6), output="logits"
        )
