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
