"""Layer library: convolutions, their depthwise strategies, norm/act and squeeze-excite."""

from sepnets.layers.activations import ACTIVATIONS, get_act
from sepnets.layers.conv import DepthwiseConv, PointwiseConv, StandardConv, conv_kernel_init
from sepnets.layers.depthwise import STRATEGIES, get_strategy
from sepnets.layers.helpers import PADDINGS
from sepnets.layers.norm_act import ConvNormAct, batch_norm
from sepnets.layers.separable import SeparableConv
from sepnets.layers.squeeze_excite import SqueezeExcite

__all__ = [
    'ACTIVATIONS', 'PADDINGS', 'STRATEGIES', 'ConvNormAct', 'DepthwiseConv', 'PointwiseConv',
    'SeparableConv', 'SqueezeExcite', 'StandardConv', 'batch_norm', 'conv_kernel_init',
    'get_act', 'get_strategy',
]
