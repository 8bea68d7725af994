"""JAX + Flax + Optax peers under jax.jit (the optional `bench` extra; skipped when absent)."""

from __future__ import annotations

import statistics
import time

import numpy as np

from benchmarks import _workloads as W
from benchmarks._harness import Result, Timing, measure, per_gemm_note, result


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


def _train_step_result(workload: str, build, quick: bool, pieces: bool = False) -> list[Result]:
    """The jitted train step; with ``pieces``, also its pieces alone and its matmuls alone."""
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

    def update(g, s, p):
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    @jax.jit
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        p, s = update(g, s, p)
        return p, s, loss

    carry = [params, state]

    def call():
        carry[0], carry[1], loss = step(carry[0], carry[1], x, y)
        jax.block_until_ready((carry[0], carry[1], loss))  # the whole step, not just the loss

    t0 = time.perf_counter()
    call()
    compile_s = time.perf_counter() - t0
    repeats = 5 if quick else 20
    if not pieces:
        timing = measure(call, warmup=3, repeats=repeats)
        return [result(workload, W.JAX_PEER, timing, compile_s=compile_s)]
    grads = jax.grad(loss_fn)(params, x, y)
    parts = {
        "step": call,
        "forward": _jitted(loss_fn, params, x, y),
        "forward + grad": _jitted(jax.value_and_grad(loss_fn), params, x, y),
        "Adam update": _jitted(update, grads, state, params),
        **_mlp_dots(params),
    }
    times = _round_robin(parts, repeats)
    timing = Timing(times.pop("step"))
    dots = {k.removeprefix("dot "): times.pop(k) for k in list(times) if k.startswith("dot ")}
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    dots_ms = {k: statistics.median(v) * 1e3 for k, v in dots.items()}
    ms["the 8 dots, each alone"] = sum(dots_ms.values())
    note = "jit pieces alone: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()) + " ms"
    return [
        result(
            workload, W.JAX_PEER, timing, compile_s=compile_s, note=note, extra={"pieces_ms": ms}
        ),
        result(
            W.MLP_GEMMS,
            "JAX dot (jit each, Flax layout)",
            Timing([sum(rep) for rep in zip(*dots.values(), strict=True)]),
            note=per_gemm_note(dots_ms),
            extra={"per_gemm_ms": dots_ms},
        ),
    ]


def _jitted(fn, *args):
    """A call of ``jax.jit(fn)(*args)`` that waits for its result (compiled on first call)."""
    import jax

    f = jax.jit(fn)

    def call():
        jax.block_until_ready(f(*args))

    call()
    return call


def _mlp_dots(params) -> dict:
    """A call per matmul of the MLP step (3 forward, 2 input and 3 weight gradients), jitted alone.

    Operands in the layouts of the step: Flax's kernels are ``(in, out)``, so the
    forward is ``x @ kernel``, the input gradient ``g @ kernel.T`` and the weight
    gradient ``x.T @ g``, as ``jax.grad`` differentiates them.
    """
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    sizes = W.MLP_SIZES
    kernels = [params["params"][f"Dense_{i}"]["kernel"] for i in range(len(sizes) - 1)]

    def act(n):
        return jnp.asarray(rng.standard_normal((W.MLP_BATCH, n), dtype=np.float32))

    acts = [(act(k.shape[0]), act(k.shape[1])) for k in kernels]  # layer input, output grad
    products = {
        "fwd": lambda a, g, k: _jitted(lambda a, k: a @ k, a, k),
        "wgrad": lambda a, g, k: _jitted(lambda a, g: a.T @ g, a, g),
        "xgrad": lambda a, g, k: _jitted(lambda g, k: g @ k.T, g, k),
    }
    return {
        f"dot {label}": products[kind](*acts[i], kernels[i]) for label, i, kind in W.mlp_matmuls()
    }


def _round_robin(calls: dict, repeats: int, number: int = 10) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``, timed in turn ``repeats`` times."""
    for call in calls.values():
        measure(call, warmup=3, repeats=1)
    times = {k: [] for k in calls}
    for _ in range(repeats):
        for k, call in calls.items():
            times[k] += measure(call, warmup=0, repeats=1, number=number).times
    return times


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


def run(quick: bool = False, workloads: tuple[str, ...] = ("cnn", "mlp", "adam")) -> list[Result]:
    """The JAX peers of ``workloads`` (``"cnn"``, ``"mlp"``, ``"adam"``); none without JAX.

    The MLP step also comes with its pieces timed alone (forward, forward and
    gradient, the update, each matmul).
    """
    if not _available():
        return []
    out = []
    if "cnn" in workloads:
        out += _train_step_result(W.CNN, _cnn, quick)
    if "mlp" in workloads:
        out += _train_step_result(W.MLP, _mlp, quick, pieces=True)
    if "adam" in workloads:
        out.append(_adam_result(quick))
    return out


def note() -> str:
    """Why this module produced no rows, if it did not."""
    if _available():
        return ""
    return "JAX peers skipped: install the `bench` extra (jax, flax, optax)."


if __name__ == "__main__":
    from benchmarks._harness import format_table, threads_note

    print(format_table(run()))
    print(threads_note())
