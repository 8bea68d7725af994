"""The argument checks of :mod:`fdl.privacy`, kept in :mod:`fdl._dp_checks`.

They live in a top-level internal module so that :mod:`fdl.distributed` shares them.
"""

from fdl._dp_checks import (
    check_clip,
    check_delta,
    check_dp_args,
    check_expected,
    check_noise,
    check_number,
    check_rate,
)

__all__ = [
    "check_clip",
    "check_delta",
    "check_dp_args",
    "check_expected",
    "check_noise",
    "check_number",
    "check_rate",
]
