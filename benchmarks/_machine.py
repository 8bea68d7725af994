"""What the benchmarks ran on: CPU, threads, library versions, and the CPU's peak FLOP rate."""

from __future__ import annotations

import importlib
import os
import platform
import re
from dataclasses import dataclass

import torch

# FLOPs per cycle per core for one fused multiply-add pipe, by vector ISA (fp32 lanes x 2 for FMA).
_LANES_FP32 = {"AVX512": 16, "AVX2": 8, "DEFAULT": 4}
_FMA_PIPES = 2  # x86 server cores since Haswell/Zen2 issue two FMA vector ops per cycle


@dataclass
class Machine:
    cpu: str
    cores: int
    torch_threads: int
    mhz: float
    isa: str
    peak_gflops_fp32: float

    def describe(self) -> str:
        return (
            f"{self.cpu}, {self.cores} cores, torch threads {self.torch_threads}, "
            f"{self.mhz:.0f} MHz, {self.isa}; fp32 peak ≈ {self.peak_gflops_fp32:.0f} GFLOP/s "
            f"({self.cores} cores × {self.mhz / 1e3:.2f} GHz × "
            f"{_LANES_FP32.get(self.isa, 4)} lanes × 2 (FMA) × {_FMA_PIPES} pipes)"
        )


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine() -> Machine:
    """Read the CPU model, core count, clock and vector ISA of this machine."""
    cpu = _cpuinfo_field("model name") or platform.processor() or "unknown CPU"
    mhz_s = _cpuinfo_field("cpu MHz")
    mhz = float(mhz_s) if mhz_s else 2000.0
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            mhz = max(mhz, int(f.read()) / 1e3)
    except (OSError, ValueError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    isa = torch.backends.cpu.get_cpu_capability()
    isa = re.sub(r"[^A-Z0-9]", "", isa.upper()) or "DEFAULT"
    lanes = _LANES_FP32.get(isa, 4)
    peak = cores * mhz * 1e6 * lanes * 2 * _FMA_PIPES / 1e9
    return Machine(cpu, int(cores or 1), torch.get_num_threads(), mhz, isa, peak)


def versions() -> dict[str, str]:
    """Versions of Python and every library a peer uses (absent ones say so)."""
    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "fdl", "jax", "flax", "optax", "opacus", "numpy"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            out[name] = "not installed"
    return out
