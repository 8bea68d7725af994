"""The accountant's argument checks, kept in :mod:`fdl._dp_checks` with DP-SGD's.

They live in a top-level internal module so that :mod:`fdl.distributed` shares them.
"""

from fdl._dp_checks import check_delta, check_number, check_rate

__all__ = ["check_delta", "check_number", "check_rate"]
