"""The one guard for work that runs on the eager path only.

Input validation (structure checks, value-range checks, messages built from
Python strings) walks trees and reads tensor values in Python. Under
``torch.compile`` that would break the graph or bake values into it, so it runs
only eagerly: a compiled function is always first called eagerly-checked by its
builder, or its shapes surface as kernel errors. Under ``torch.func``
transforms the same checks run on the unwrapped structure and stay valid.

Example:
    >>> from fdl import _eager
    >>> _eager.validating()
    True
"""

from __future__ import annotations

import torch

__all__ = ["validating"]


def validating() -> bool:
    """True when fdl should validate inputs: not while ``torch.compile`` traces."""
    return not torch.compiler.is_compiling()
