"""MobileNetV1, https://arxiv.org/abs/1704.04861, as timm's mobilenetv1_100 (ReLU6, no head conv).

`full_conv=True` replaces every depthwise-separable block by one standard 3x3 conv with the
same channels and stride: the paper's Table 4 'Conv MobileNet' (29.3M parameters).
"""

from __future__ import annotations

import dataclasses

from sepnets.registry import ModelDef
from sepnets.specs import NetSpec, cn, ds

MOBILENET_V1 = NetSpec(stem_chs=32, act='relu6', stages=(
    (ds(k=3, s=1, c=64, pw_act=True, skip=False),),
    (ds(k=3, s=2, c=128, r=2, pw_act=True, skip=False),),
    (ds(k=3, s=2, c=256, r=2, pw_act=True, skip=False),),
    (ds(k=3, s=2, c=512, r=6, pw_act=True, skip=False),),
    (ds(k=3, s=2, c=1024, r=2, pw_act=True, skip=False),),
))


def full_conv_spec(spec: NetSpec) -> NetSpec:
  """Every ds block replaced by a standard conv of the same kernel, stride and channels."""
  stages = tuple(tuple(cn(k=b.kernel, s=b.stride, c=b.out_chs, r=b.repeats) if b.kind == 'ds' else b
                       for b in stage) for stage in spec.stages)
  return dataclasses.replace(spec, stages=stages)


def mobilenet_v1(*, width: float = 1.0, full_conv: bool = False) -> tuple[NetSpec, float, float]:
  if not isinstance(full_conv, bool):
    raise ValueError(f'full_conv must be True or False, got {full_conv!r}')
  return (full_conv_spec(MOBILENET_V1) if full_conv else MOBILENET_V1), width, 1.0


MODEL_DEFS = (
    ModelDef('mobilenet_v1', 'mobilenet_v1', 'https://arxiv.org/abs/1704.04861', 224,
             mobilenet_v1, 'timm:mobilenetv1_100'),
)
