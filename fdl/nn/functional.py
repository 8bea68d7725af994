"""Function forms of the layers, activations and normalisations, as in ``torch.nn.functional``."""

from fdl.nn._functional_activations import *  # noqa: F403
from fdl.nn._functional_attention import *  # noqa: F403
from fdl.nn._functional_layers import *  # noqa: F403
from fdl.nn._functional_norms import *  # noqa: F403

# isort: split
# the rest of torch.nn.functional's layers, one module per topic
from fdl.nn._functional_conv_nd import *  # noqa: F403
from fdl.nn._functional_distance import *  # noqa: F403
from fdl.nn._functional_embedding_bag import *  # noqa: F403
from fdl.nn._functional_feature_dropout import *  # noqa: F403
from fdl.nn._functional_fractional_pool import *  # noqa: F403
from fdl.nn._functional_padding import *  # noqa: F403
from fdl.nn._functional_piecewise import *  # noqa: F403
from fdl.nn._functional_pooling_nd import *  # noqa: F403
from fdl.nn._functional_shuffle import *  # noqa: F403
from fdl.nn._functional_smooth import *  # noqa: F403
from fdl.nn._functional_upsampling import *  # noqa: F403
