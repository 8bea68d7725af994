"""Layers as pure ``init``/``apply`` pairs with ``torch.nn`` names, arguments and layouts.

See :mod:`fdl.nn._base` for the layer protocol (params, state, keys).
"""

from fdl.nn import functional, init
from fdl.nn._base import Layer, Params, State, eval_shape
from fdl.nn.activation import *  # noqa: F403
from fdl.nn.attention import *  # noqa: F403
from fdl.nn.container import *  # noqa: F403
from fdl.nn.containers_list import *  # noqa: F403
from fdl.nn.conv import *  # noqa: F403
from fdl.nn.dropout import *  # noqa: F403
from fdl.nn.embedding import *  # noqa: F403
from fdl.nn.functionalize import *  # noqa: F403
from fdl.nn.linear import *  # noqa: F403
from fdl.nn.normalization import *  # noqa: F403
from fdl.nn.pooling import *  # noqa: F403
from fdl.nn.recurrent import *  # noqa: F403
from fdl.nn.shape import *  # noqa: F403
from fdl.nn.state_dict import *  # noqa: F403
from fdl.nn.transformer import *  # noqa: F403

# isort: split
# the rest of torch.nn's layers, one module per topic
from fdl.nn.adaptive_softmax import *  # noqa: F403
from fdl.nn.batch_norm3d import *  # noqa: F403
from fdl.nn.conv3d import *  # noqa: F403
from fdl.nn.conv_transpose_nd import *  # noqa: F403
from fdl.nn.distance import *  # noqa: F403
from fdl.nn.embedding_bag import *  # noqa: F403
from fdl.nn.feature_dropout import *  # noqa: F403
from fdl.nn.fractional_pool import *  # noqa: F403
from fdl.nn.instance_norm import *  # noqa: F403
from fdl.nn.linear_cross_entropy import *  # noqa: F403
from fdl.nn.local_response_norm import *  # noqa: F403
from fdl.nn.padding import *  # noqa: F403
from fdl.nn.piecewise_activations import *  # noqa: F403
from fdl.nn.pooling_nd import *  # noqa: F403
from fdl.nn.rms_norm import *  # noqa: F403
from fdl.nn.shuffle import *  # noqa: F403
from fdl.nn.smooth_activations import *  # noqa: F403
from fdl.nn.upsampling import *  # noqa: F403
