"""MobileNetV2, https://arxiv.org/abs/1801.04381, as torchvision's mobilenet_v2."""

from __future__ import annotations

from sepnets.registry import ModelDef
from sepnets.specs import NetSpec, ds, ir

MOBILENET_V2 = NetSpec(stem_chs=32, act='relu6', head_chs=1280, head_width='scale_min1',
                       dropout=0.2, stages=(
    (ds(k=3, s=1, c=16),),
    (ir(r=2, k=3, s=2, e=6, c=24),),
    (ir(r=3, k=3, s=2, e=6, c=32),),
    (ir(r=4, k=3, s=2, e=6, c=64), ir(r=3, k=3, s=1, e=6, c=96)),
    (ir(r=3, k=3, s=2, e=6, c=160), ir(r=1, k=3, s=1, e=6, c=320)),
))


def mobilenet_v2(*, width: float = 1.0) -> tuple[NetSpec, float, float]:
  return MOBILENET_V2, width, 1.0


MODEL_DEFS = (
    ModelDef('mobilenet_v2', 'mobilenet_v2', 'https://arxiv.org/abs/1801.04381', 224,
             mobilenet_v2, 'torchvision:mobilenet_v2'),
)
