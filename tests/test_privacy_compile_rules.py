"""DP-SGD's variants on the compiled rules path: per-layer clipping, micro-batches, adaptive clip.

Each entry of the registry builds a private-gradient function with
``method="rules"``; compiled (``torch.compile(fullgraph=True)``, the ``eager``
backend: Dynamo's graph without code generation, to keep the file fast) it
must equal the same function run eagerly on the rules path and on the
``vmap`` path, for two batches with new keys and Poisson masks, take the rules
(one in-graph reduction check per rules decomposition) and trace once.
Per-layer clipping and micro-batches share one compile (per-layer bounds over
chunks of 4 and 2 rows), as compiles of the rules path are slow. The model
is a two-layer MLP with a bias, float64 (the same roundings as eagerly in
another order: 1e-10).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_per_sample_compile import Graphs, _close
from test_per_sample_layers import _ints, _randn

import fdl
from fdl import privacy

B = 6
DP = {"noise_multiplier": 0.7, "expected_batch_size": 4.0}


def _loss(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(torch.tanh(F.linear(x, p["w1"], p["b1"])), p["w2"]), y)


def _per_layer_micro(method: str) -> Callable:
    # per-layer bounds over micro-batches of 4 and 2 rows: both variants in one compile
    bounds = {"b1": 0.3, "w1": 0.5, "w2": 0.4}
    return privacy.dp_grads(_loss, **DP, max_grad_norm=bounds, micro_batch_size=4, method=method)


def _adaptive(method: str) -> Callable:
    fn = privacy.adaptive_dp_grads(
        _loss, **DP, target_quantile=0.5, clip_lr=0.2, unclipped_num_std=1.0, method=method
    )
    return lambda params, key, *batch, mask: fn(
        params, privacy.init_adaptive_clip(0.5), key, *batch, mask=mask
    )


# name -> (builder of the private-gradient function, rules decompositions per call)
VARIANTS = {"per_layer_micro_batches": (_per_layer_micro, 2), "adaptive": (_adaptive, 1)}


def _data(seed: int) -> tuple[Any, ...]:
    x, y = _randn(B, 4, dtype=torch.float64, seed=seed), _ints(B, high=3, seed=seed + 1)
    k_mask, k_noise = fdl.random.split(fdl.random.key(seed))
    return k_noise, x, y, fdl.random.uniform(k_mask, (B,)) < 0.7


@pytest.fixture(scope="module", params=list(VARIANTS))
def compiled_variant(request):
    """The compiled function's outputs on two batches, what it traced, and the builder."""
    build, decompositions = VARIANTS[request.param]
    params = {
        "w1": _randn(5, 4, dtype=torch.float64, seed=1),
        "b1": _randn(5, dtype=torch.float64, seed=2),
        "w2": _randn(3, 5, dtype=torch.float64, seed=3),
    }
    graphs = Graphs("eager")
    compiled = torch.compile(build("rules"), fullgraph=True, backend=graphs)
    batches = [_data(s) for s in (10, 20)]
    got = [compiled(params, key, x, y, mask=mask) for key, x, y, mask in batches]
    return build, params, batches, got, graphs, decompositions


def test_compiled_variant_equals_eager_rules_and_vmap(compiled_variant):
    build, params, batches, got, *_ = compiled_variant
    for (key, x, y, mask), out in zip(batches, got, strict=True):
        for method in ("rules", "vmap"):
            want = build(method)(params, key, x, y, mask=mask)
            _close(out, want, torch.float64)


def test_compiled_variant_takes_the_rules_and_traces_once(compiled_variant):
    *_, graphs, decompositions = compiled_variant
    assert len(graphs) == 1  # two batches, keys and masks: one trace
    # one in-graph reduction check per rules decomposition (the vmap path traces none)
    assert graphs.rules_checks() == decompositions
