"""MobileNetV3, https://arxiv.org/abs/1905.02244, as torchvision's mobilenet_v3_large/small.

The tables give each block's expanded (mid) channels explicitly, as the paper's Tables 1-2.
"""

from __future__ import annotations

from sepnets.registry import ModelDef
from sepnets.specs import NetSpec, ds, ir

_V3 = dict(stem_chs=16, act='hard_swish', head_factor=6, se_gate='hard_sigmoid', se_act='relu',
           se_from='mid', bn_eps=1e-3, bn_momentum=0.99, dropout=0.2)
SE = 0.25

MOBILENET_V3_LARGE = NetSpec(pre_logits_chs=1280, **_V3, stages=(
    (ds(k=3, s=1, c=16, act='relu'),),
    (ir(k=3, s=2, mid=64, c=24, act='relu'), ir(k=3, s=1, mid=72, c=24, act='relu')),
    (ir(k=5, s=2, mid=72, c=40, se=SE, act='relu'), ir(r=2, k=5, s=1, mid=120, c=40, se=SE, act='relu')),
    (ir(k=3, s=2, mid=240, c=80), ir(k=3, s=1, mid=200, c=80), ir(r=2, k=3, s=1, mid=184, c=80),
     ir(k=3, s=1, mid=480, c=112, se=SE), ir(k=3, s=1, mid=672, c=112, se=SE)),
    (ir(k=5, s=2, mid=672, c=160, se=SE), ir(r=2, k=5, s=1, mid=960, c=160, se=SE)),
))

MOBILENET_V3_SMALL = NetSpec(pre_logits_chs=1024, **_V3, stages=(
    (ds(k=3, s=2, c=16, se=SE, act='relu'),),
    (ir(k=3, s=2, mid=72, c=24, act='relu'), ir(k=3, s=1, mid=88, c=24, act='relu')),
    (ir(k=5, s=2, mid=96, c=40, se=SE), ir(r=2, k=5, s=1, mid=240, c=40, se=SE),
     ir(k=5, s=1, mid=120, c=48, se=SE), ir(k=5, s=1, mid=144, c=48, se=SE)),
    (ir(k=5, s=2, mid=288, c=96, se=SE), ir(r=2, k=5, s=1, mid=576, c=96, se=SE)),
))


def mobilenet_v3_large(*, width: float = 1.0) -> tuple[NetSpec, float, float]:
  return MOBILENET_V3_LARGE, width, 1.0


def mobilenet_v3_small(*, width: float = 1.0) -> tuple[NetSpec, float, float]:
  return MOBILENET_V3_SMALL, width, 1.0


_PAPER = 'https://arxiv.org/abs/1905.02244'
MODEL_DEFS = (
    ModelDef('mobilenet_v3_large', 'mobilenet_v3', _PAPER, 224, mobilenet_v3_large,
             'torchvision:mobilenet_v3_large'),
    ModelDef('mobilenet_v3_small', 'mobilenet_v3', _PAPER, 224, mobilenet_v3_small,
             'torchvision:mobilenet_v3_small'),
)
