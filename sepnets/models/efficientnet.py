"""EfficientNet-B0..B7, https://arxiv.org/abs/1905.11946, as torchvision's efficientnet_b*.

Compound scaling: channels make_divisible(c * width, 8), repeats ceil(r * depth). B5-B7 use
BatchNorm eps 1e-3 and PyTorch momentum 0.01 as torchvision does.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from sepnets.registry import ModelDef
from sepnets.specs import NetSpec, ds, ir

SE = 0.25
EFFICIENTNET = NetSpec(stem_chs=32, act='swish', head_factor=4, se_from='in', stages=(
    (ds(k=3, s=1, c=16, se=SE),),
    (ir(r=2, k=3, s=2, e=6, c=24, se=SE),),
    (ir(r=2, k=5, s=2, e=6, c=40, se=SE),),
    (ir(r=3, k=3, s=2, e=6, c=80, se=SE), ir(r=3, k=5, s=1, e=6, c=112, se=SE)),
    (ir(r=4, k=5, s=2, e=6, c=192, se=SE), ir(r=1, k=3, s=1, e=6, c=320, se=SE)),
))

# name: (width, depth, image size, dropout)
VARIANTS = {
    'efficientnet_b0': (1.0, 1.0, 224, 0.2),
    'efficientnet_b1': (1.0, 1.1, 240, 0.2),
    'efficientnet_b2': (1.1, 1.2, 260, 0.3),
    'efficientnet_b3': (1.2, 1.4, 300, 0.3),
    'efficientnet_b4': (1.4, 1.8, 380, 0.4),
    'efficientnet_b5': (1.6, 2.2, 456, 0.4),
    'efficientnet_b6': (1.8, 2.6, 528, 0.5),
    'efficientnet_b7': (2.0, 3.1, 600, 0.5),
}
_LARGE = ('efficientnet_b5', 'efficientnet_b6', 'efficientnet_b7')


def _make_spec_fn(name: str):
  width, depth, _, dropout = VARIANTS[name]
  bn = dict(bn_eps=1e-3, bn_momentum=0.99) if name in _LARGE else {}
  spec = dataclasses.replace(EFFICIENTNET, dropout=dropout, **bn)

  def make_spec() -> tuple[NetSpec, float, float]:
    return spec, width, depth

  make_spec.__name__ = name
  return make_spec


MODEL_DEFS = tuple(
    ModelDef(name, 'efficientnet', 'https://arxiv.org/abs/1905.11946', size, _make_spec_fn(name),
             f'torchvision:{name}', defaults=MappingProxyType({'drop_path_rate': 0.2}))
    for name, (_, _, size, _) in VARIANTS.items())
