"""Function forms of the layers, activations and normalisations, as in ``torch.nn.functional``."""

from fdl.nn._functional_activations import *  # noqa: F403
from fdl.nn._functional_attention import *  # noqa: F403
from fdl.nn._functional_layers import *  # noqa: F403
from fdl.nn._functional_norms import *  # noqa: F403
