"""Workload names and sizes shared by every benchmark module, so peers from different modules
land in one table."""

CNN = "document CNN train step (batch 64)"
MLP = "MLP 784-256-256-10 train step (batch 128)"
MLP_GEMMS = "the 8 matmuls of the MLP step, each alone, summed (batch 128)"

CNN_BATCH = 64
MLP_BATCH = 128
MLP_SIZES = (784, 256, 256, 10)
JAX_PEER = "JAX + Flax + Optax (jit)"  # the JAX peer of the CNN and MLP train steps
ADAM_TENSORS = 100
ADAM_PARAMS = 10_000_000


def adam(kind: str, total: int, device: str = "cpu") -> str:
    """Name of the Adam-update workload: ``kind`` is "eager" or "compiled"."""
    return f"Adam update {kind}, {ADAM_TENSORS} tensors, {total / 1e6:.0f}M params ({device})"


def adam_total(quick: bool) -> int:
    return 1_000_000 if quick else ADAM_PARAMS


def mlp_matmuls() -> list[tuple[str, int, str]]:
    """``(label, layer, kind)`` of each matmul of the MLP step, in the order they are timed.

    ``kind``: ``"fwd"`` (the layer's output), ``"wgrad"`` (its weight gradient),
    ``"xgrad"`` (its input gradient; none for the first layer, whose input needs none).

    Example:
        >>> [label for label, _, _ in mlp_matmuls()][:3]
        ['fwd1', 'wgrad1', 'fwd2']
    """
    out = []
    for i in range(len(MLP_SIZES) - 1):
        kinds = ("fwd", "wgrad", "xgrad") if i > 0 else ("fwd", "wgrad")
        out += [(f"{kind}{i + 1}", i, kind) for kind in kinds]
    return out
