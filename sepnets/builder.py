"""Stateless: a NetSpec plus width and depth multipliers -> resolved block arguments.

Rounding follows the references: channels are make_divisible(c * width, 8) (torchvision's
_make_divisible, timm's round_channels), repeats are ceil(r * depth) (EfficientNet).
"""

from __future__ import annotations

import dataclasses
import math

from sepnets.specs import BlockSpec, NetSpec


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Nearest multiple of `divisor`, never below min_value (default divisor) nor 90% of value."""
  min_value = min_value or divisor
  new = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if new < 0.9 * value:
    new += divisor
  return new


@dataclasses.dataclass(frozen=True)
class ResolvedBlock:
  """One block's constructor arguments after scaling."""
  spec: BlockSpec
  in_chs: int
  out_chs: int
  mid_chs: int
  se_chs: int  # 0 = no squeeze-excite
  stride: int
  act: str
  drop_path_rate: float
  index: int  # position in the whole network

  @property
  def has_skip(self) -> bool:
    """Residual connection: allowed by the spec, stride 1 and unchanged channels."""
    return self.spec.skip and self.stride == 1 and self.in_chs == self.out_chs


@dataclasses.dataclass(frozen=True)
class ResolvedNet:
  stem_chs: int
  stages: tuple[tuple[ResolvedBlock, ...], ...]
  head_chs: int | None
  pre_logits_chs: int | None
  num_features: int  # channels fed to the pooling


def _check_multiplier(name: str, value: float) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 8:
    raise ValueError(f'{name} multiplier must be a number in (0, 8], got {value!r}')
  return float(value)


def _se_chs(spec: BlockSpec, net: NetSpec, in_chs: int, mid_chs: int) -> int:
  if not spec.se:
    return 0
  if net.se_from == 'in':
    return max(1, int(in_chs * spec.se))
  return make_divisible(mid_chs * spec.se)


def _mid_chs(spec: BlockSpec, in_chs: int, width: float) -> int:
  if spec.kind in ('cn', 'ds'):
    return in_chs
  if spec.mid_chs is not None:
    return make_divisible(spec.mid_chs * width)
  return make_divisible(in_chs * spec.expand)


def resolve(net: NetSpec, *, width: float = 1.0, depth: float = 1.0,
            drop_path_rate: float = 0.0) -> ResolvedNet:
  """Scales `net` by width and depth; drop path grows linearly with block index (timm)."""
  width = _check_multiplier('width', width)
  depth = _check_multiplier('depth', depth)
  if not 0 <= drop_path_rate < 1:
    raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}')
  stem = net.stem_chs if net.fix_stem else make_divisible(net.stem_chs * width)
  plan = [[(spec, math.ceil(spec.repeats * depth)) for spec in stage] for stage in net.stages]
  total = sum(n for stage in plan for _, n in stage)
  in_chs, index, stages = stem, 0, []
  for stage in plan:
    blocks = []
    for spec, repeats in stage:
      out_chs = make_divisible(spec.out_chs * width)
      for i in range(repeats):
        mid = _mid_chs(spec, in_chs, width)
        blocks.append(ResolvedBlock(
            spec=spec, in_chs=in_chs, out_chs=out_chs, mid_chs=mid,
            se_chs=_se_chs(spec, net, in_chs, mid), stride=spec.stride if i == 0 else 1,
            act=spec.act or net.act, drop_path_rate=drop_path_rate * index / total, index=index))
        in_chs, index = out_chs, index + 1
    stages.append(tuple(blocks))
  head = None
  if net.head_factor is not None:
    head = net.head_factor * in_chs
  elif net.head_chs is not None:
    scale = {'scale': width, 'scale_min1': max(1.0, width), 'fixed': 1.0}[net.head_width]
    head = make_divisible(net.head_chs * scale)
  pre_logits = None
  if net.pre_logits_chs is not None:
    pre_logits = make_divisible(net.pre_logits_chs * (width if net.pre_logits_width else 1.0))
  return ResolvedNet(stem_chs=stem, stages=tuple(stages), head_chs=head,
                     pre_logits_chs=pre_logits, num_features=head or in_chs)
