"""MobileNetV4 conv models, https://arxiv.org/abs/2404.10518, as timm's mobilenetv4_conv_*.

uib(a, k): start and mid depthwise kernels (0 = none): ExtraDW (a, k), IR (0, k),
ConvNeXt-like (a, 0), FFN (0, 0).
"""

from __future__ import annotations

from sepnets.registry import ModelDef
from sepnets.specs import NetSpec, cn, er, uib

_V4 = dict(act='relu', pre_logits_chs=1280, pre_logits_norm=True, pre_logits_width=False)

MOBILENET_V4_CONV_SMALL = NetSpec(stem_chs=32, **_V4, stages=(
    (cn(k=3, s=2, c=32), cn(k=1, s=1, c=32)),
    (cn(k=3, s=2, c=96), cn(k=1, s=1, c=64)),
    (uib(a=5, k=5, s=2, e=3, c=96), uib(r=4, a=0, k=3, s=1, e=2, c=96),
     uib(a=3, k=0, s=1, e=4, c=96)),
    (uib(a=3, k=3, s=2, e=6, c=128), uib(a=5, k=5, s=1, e=4, c=128),
     uib(a=0, k=5, s=1, e=4, c=128), uib(a=0, k=5, s=1, e=3, c=128),
     uib(r=2, a=0, k=3, s=1, e=4, c=128)),
    (cn(k=1, s=1, c=960),),
))

MOBILENET_V4_CONV_MEDIUM = NetSpec(stem_chs=32, **_V4, stages=(
    (er(k=3, s=2, e=4, c=48),),
    (uib(a=3, k=5, s=2, e=4, c=80), uib(a=3, k=3, s=1, e=2, c=80)),
    (uib(a=3, k=5, s=2, e=6, c=160), uib(r=2, a=3, k=3, s=1, e=4, c=160),
     uib(a=3, k=5, s=1, e=4, c=160), uib(a=3, k=3, s=1, e=4, c=160),
     uib(a=3, k=0, s=1, e=4, c=160), uib(a=0, k=0, s=1, e=2, c=160),
     uib(a=3, k=0, s=1, e=4, c=160)),
    (uib(a=5, k=5, s=2, e=6, c=256), uib(a=5, k=5, s=1, e=4, c=256),
     uib(r=2, a=3, k=5, s=1, e=4, c=256), uib(a=0, k=0, s=1, e=4, c=256),
     uib(a=3, k=0, s=1, e=4, c=256), uib(a=3, k=5, s=1, e=2, c=256),
     uib(a=5, k=5, s=1, e=4, c=256), uib(r=2, a=0, k=0, s=1, e=4, c=256),
     uib(a=5, k=0, s=1, e=2, c=256)),
    (cn(k=1, s=1, c=960),),
))

MOBILENET_V4_CONV_LARGE = NetSpec(stem_chs=24, **_V4, stages=(
    (er(k=3, s=2, e=4, c=48),),
    (uib(a=3, k=5, s=2, e=4, c=96), uib(a=3, k=3, s=1, e=4, c=96)),
    (uib(a=3, k=5, s=2, e=4, c=192), uib(r=3, a=3, k=3, s=1, e=4, c=192),
     uib(a=3, k=5, s=1, e=4, c=192), uib(r=5, a=5, k=3, s=1, e=4, c=192),
     uib(a=3, k=0, s=1, e=4, c=192)),
    (uib(r=4, a=5, k=5, s=2, e=4, c=512), uib(a=5, k=0, s=1, e=4, c=512),
     uib(a=5, k=3, s=1, e=4, c=512), uib(r=2, a=5, k=0, s=1, e=4, c=512),
     uib(a=5, k=3, s=1, e=4, c=512), uib(a=5, k=5, s=1, e=4, c=512),
     uib(r=3, a=5, k=0, s=1, e=4, c=512)),
    (cn(k=1, s=1, c=960),),
))


def mobilenet_v4_conv_small() -> tuple[NetSpec, float, float]:
  return MOBILENET_V4_CONV_SMALL, 1.0, 1.0


def mobilenet_v4_conv_medium() -> tuple[NetSpec, float, float]:
  return MOBILENET_V4_CONV_MEDIUM, 1.0, 1.0


def mobilenet_v4_conv_large() -> tuple[NetSpec, float, float]:
  return MOBILENET_V4_CONV_LARGE, 1.0, 1.0


_PAPER = 'https://arxiv.org/abs/2404.10518'
MODEL_DEFS = (
    ModelDef('mobilenet_v4_conv_small', 'mobilenet_v4', _PAPER, 224, mobilenet_v4_conv_small,
             'timm:mobilenetv4_conv_small'),
    ModelDef('mobilenet_v4_conv_medium', 'mobilenet_v4', _PAPER, 256, mobilenet_v4_conv_medium,
             'timm:mobilenetv4_conv_medium'),
    ModelDef('mobilenet_v4_conv_large', 'mobilenet_v4', _PAPER, 384, mobilenet_v4_conv_large,
             'timm:mobilenetv4_conv_large'),
)
