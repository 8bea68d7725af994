"""JAX + Flax + Optax peers under jax.jit (the optional `bench` extra; skipped when absent)."""

from __future__ import annotations

import time

import numpy as np

from benchmarks import _workloads as W
from benchmarks._harness import Result, measure, result


def _available() -> bool:
    try:
        import flax  # noqa: F401
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError:
        return False
    return True


def _cnn():
    import flax.linen as nn
    import jax

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):  # x: (B, 28, 28, 1), NHWC as Flax expects
            x = nn.max_pool(jax.nn.relu(nn.Conv(32, (3, 3), padding=1)(x)), (2, 2), (2, 2))
            x = nn.max_pool(jax.nn.relu(nn.Conv(64, (3, 3), padding=1)(x)), (2, 2), (2, 2))
            x = x.reshape(x.shape[0], -1)  # (B, 7*7*64)
            x = jax.nn.relu(nn.Dense(128)(x))
            return jax.nn.log_softmax(nn.Dense(10)(x))

    return CNN(), np.zeros((W.CNN_BATCH, 28, 28, 1), np.float32), W.CNN_BATCH


def _mlp():
    import flax.linen as nn
    import jax

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for width in W.MLP_SIZES[1:-1]:
                x = jax.nn.relu(nn.Dense(width)(x))
            return jax.nn.log_softmax(nn.Dense(W.MLP_SIZES[-1])(x))

    return MLP(), np.zeros((W.MLP_BATCH, W.MLP_SIZES[0]), np.float32), W.MLP_BATCH


def _train_step_result(workload: str, build, quick: bool) -> Result:
    import jax
    import jax.numpy as jnp
    import optax

    model, x0, batch = build()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x0.shape, dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))
    params = model.init(jax.random.key(0), x)
    opt = optax.adam(1e-3)
    state = opt.init(params)

    def loss_fn(p, x, y):
        logp = model.apply(p, x)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    carry = [params, state]

    def call():
        carry[0], carry[1], loss = step(carry[0], carry[1], x, y)
        jax.block_until_ready((carry[0], carry[1], loss))  # the whole step, not just the loss

    t0 = time.perf_counter()
    call()
    compile_s = time.perf_counter() - t0
    timing = measure(call, warmup=3, repeats=5 if quick else 20)
    return result(workload, "JAX + Flax + Optax (jit)", timing, compile_s=compile_s)


def _adam_result(quick: bool) -> Result:
    import jax
    import jax.numpy as jnp
    import optax

    total = W.adam_total(quick)
    n = total // W.ADAM_TENSORS
    params = {f"p{i}": jnp.ones((n,), jnp.float32) * 0.01 * i for i in range(W.ADAM_TENSORS)}
    grads = {k: v * 0.1 + 0.01 for k, v in params.items()}
    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def update(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    carry = [params, state]

    def call():
        carry[0], carry[1] = update(carry[0], carry[1], grads)
        jax.block_until_ready(carry[0])

    t0 = time.perf_counter()
    call()
    compile_s = time.perf_counter() - t0
    timing = measure(call, warmup=3, repeats=5 if quick else 20)
    return result(W.adam("compiled", total), "JAX + Optax (jit)", timing, compile_s=compile_s)


def run(quick: bool = False) -> list[Result]:
    if not _available():
        return []
    return [
        _train_step_result(W.CNN, _cnn, quick),
        _train_step_result(W.MLP, _mlp, quick),
        _adam_result(quick),
    ]


def note() -> str:
    """Why this module produced no rows, if it did not."""
    if _available():
        return ""
    return "JAX peers skipped: install the `bench` extra (jax, flax, optax)."


if __name__ == "__main__":
    from benchmarks._harness import format_table, threads_note

    print(format_table(run()))
    print(threads_note())
