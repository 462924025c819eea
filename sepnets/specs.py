"""Architectures as typed data: frozen block and network specs with validating constructors.

A stage is a tuple of BlockSpecs; each BlockSpec is `repeats` identical blocks of which the
first takes the stride. Channel counts are at width 1.0; the builder scales them. The
constructors are keyword-only and validate, so a typo in a spec table fails at import.

Block kinds (the names timm's block strings use, so tables diff line by line):
  cn  conv -> BN -> act                                  (MobileNetV4 'Conv')
  ds  depthwise -> BN -> act [-> SE] -> pointwise -> BN [-> act]    (MobileNet V1/V2 first block)
  ir  [1x1 expand -> BN -> act] -> depthwise -> BN -> act [-> SE] -> 1x1 project -> BN (MBConv)
  er  KxK expand -> BN -> act [-> SE] -> 1x1 project -> BN           (Fused-MBConv/EdgeResidual)
  uib [dw start -> BN] -> 1x1 expand -> BN -> act [-> dw mid -> BN -> act] -> 1x1 project -> BN
"""

from __future__ import annotations

import dataclasses

from sepnets.layers.activations import ACTIVATIONS

KINDS = ('cn', 'ds', 'ir', 'er', 'uib')


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  kind: str
  repeats: int
  kernel: int  # conv kernel (cn, er), depthwise kernel (ds, ir), mid depthwise kernel (uib; 0 = none)
  stride: int
  out_chs: int
  expand: float = 1.0  # ir, er, uib: mid channels = make_divisible(in_chs * expand)
  mid_chs: int | None = None  # ir: explicit mid channels at width 1.0 (MobileNetV3's tables)
  start_kernel: int = 0  # uib: depthwise kernel before the expansion (0 = none)
  se: float = 0.0  # squeeze-excite ratio (0 = none)
  act: str | None = None  # overrides the network's activation
  pw_act: bool = False  # ds: activation after the pointwise conv (MobileNetV1)
  skip: bool = True  # residual when stride is 1 and channels match (cn never has one)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'unknown block kind {self.kind!r}; expected one of {KINDS}')
    for name in ('repeats', 'out_chs'):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise ValueError(f'{self.kind}: {name} must be a positive integer, got {getattr(self, name)!r}')
    if self.stride not in (1, 2):
      raise ValueError(f'{self.kind}: stride must be 1 or 2, got {self.stride!r}')
    if self.kernel < (0 if self.kind == 'uib' else 1) or self.start_kernel < 0:
      raise ValueError(f'{self.kind}: bad kernel size {self.kernel!r}')
    if self.expand < 1:
      raise ValueError(f'{self.kind}: expand must be >= 1, got {self.expand!r}')
    if not 0 <= self.se < 1:
      raise ValueError(f'{self.kind}: se ratio must be in [0, 1), got {self.se!r}')
    if self.act is not None and self.act not in ACTIVATIONS:
      raise ValueError(f'{self.kind}: unknown activation {self.act!r}')
    if self.kind == 'uib' and self.stride == 2 and not (self.kernel or self.start_kernel):
      raise ValueError('uib: a strided block needs a start or mid depthwise kernel')


def cn(*, k: int, s: int, c: int, r: int = 1, act: str | None = None) -> BlockSpec:
  return BlockSpec('cn', r, k, s, c, act=act, skip=False)


def ds(*, k: int, s: int, c: int, r: int = 1, se: float = 0.0, act: str | None = None,
       pw_act: bool = False, skip: bool = True) -> BlockSpec:
  return BlockSpec('ds', r, k, s, c, se=se, act=act, pw_act=pw_act, skip=skip)


def ir(*, k: int, s: int, c: int, e: float = 1.0, r: int = 1, mid: int | None = None,
       se: float = 0.0, act: str | None = None) -> BlockSpec:
  return BlockSpec('ir', r, k, s, c, expand=e, mid_chs=mid, se=se, act=act)


def er(*, k: int, s: int, c: int, e: float, r: int = 1, se: float = 0.0,
       act: str | None = None) -> BlockSpec:
  return BlockSpec('er', r, k, s, c, expand=e, se=se, act=act)


def uib(*, a: int, k: int, s: int, e: float, c: int, r: int = 1, act: str | None = None) -> BlockSpec:
  return BlockSpec('uib', r, k, s, c, expand=e, start_kernel=a, act=act)


HEAD_WIDTH_RULES = ('scale', 'scale_min1', 'fixed')


@dataclasses.dataclass(frozen=True)
class NetSpec:
  """A whole network: stem, stages, head.

  Args:
    stem_chs: stem conv channels (3x3, stride 2) at width 1.0.
    stages: tuple of stages, each a tuple of BlockSpecs.
    act: default activation.
    head_chs: 1x1 conv before pooling (None for none); head_factor: instead a multiple of
      the last stage's channels (MobileNetV3, EfficientNet).
    head_width: how width scales head_chs: 'scale', 'scale_min1' (never below 1.0; MobileNetV2)
      or 'fixed'.
    pre_logits_chs: a linear layer after pooling (MobileNetV3/V4 'efficient head').
    pre_logits_norm: BatchNorm instead of a bias on it (MobileNetV4).
    se_gate, se_act: squeeze-excite gate and inner activation (None: the block's activation).
    se_from: 'mid' (reduced = make_divisible(mid * ratio); MobileNetV3) or 'in'
      (reduced = max(1, int(in * ratio)); EfficientNet).
    bn_eps, bn_momentum: BatchNorm settings (momentum in Flax's convention: 1 - PyTorch's).
    dropout: default dropout before the classifier.
  """
  stem_chs: int
  stages: tuple[tuple[BlockSpec, ...], ...]
  act: str = 'relu'
  stem_act: str | None = None
  head_chs: int | None = None
  head_factor: int | None = None
  head_width: str = 'scale'
  pre_logits_chs: int | None = None
  pre_logits_norm: bool = False
  pre_logits_width: bool = True
  se_gate: str = 'sigmoid'
  se_act: str | None = None
  se_from: str = 'mid'
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9
  dropout: float = 0.0
  fix_stem: bool = False  # stem channels do not scale with width

  def __post_init__(self):
    if not self.stages or not all(self.stages):
      raise ValueError('a NetSpec needs at least one non-empty stage')
    if self.head_width not in HEAD_WIDTH_RULES:
      raise ValueError(f'unknown head_width {self.head_width!r}; expected one of {HEAD_WIDTH_RULES}')
    if self.se_from not in ('mid', 'in'):
      raise ValueError(f"se_from must be 'mid' or 'in', got {self.se_from!r}")
    for name in (self.act, self.stem_act, self.se_gate, self.se_act):
      if name is not None and name not in ACTIVATIONS:
        raise ValueError(f'unknown activation {name!r}')
