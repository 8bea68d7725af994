"""Workload names and sizes shared by every benchmark module, so peers from different modules
land in one table."""

CNN = "document CNN train step (batch 64)"
MLP = "MLP 784-256-256-10 train step (batch 128)"
ADAM = "Adam update (100 tensors, 10M params)"

CNN_BATCH = 64
MLP_BATCH = 128
MLP_SIZES = (784, 256, 256, 10)
ADAM_TENSORS = 100
ADAM_PARAMS = 10_000_000
