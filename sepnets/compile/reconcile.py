"""Per-layer reconciliation of analytic MACs with the flops the compiler really emitted.

Every counted HLO op (see `hlo_cost`) is attributed to the layer whose named scope appears in
its metadata (`sepnets.trace.layer_scopes`; under autodiff the backward ops carry
`transpose(jvp(<layer>))`), or to no layer (activations, residual adds, pooling, the loss,
the optimizer update). Per layer the forward conv/dot flops are checked against 2 x the
analytic valid-tap MACs, and the bridge

  MACs over every tap - padding taps = valid MACs;  2 x valid MACs = forward conv/dot flops
  + backward conv/dot flops + elementwise/reduce flops in layers + flops outside layers
  = the HLO-derived total (= XLA's total where XLA reports one)

accounts for every flop.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

from sepnets.compile.hlo_cost import ConvOp, DotOp, HloCost
from sepnets.costs import LayerCost

_TOKEN = re.compile(r'[\w.\-]+')
MATMUL = ('convolution', 'dot')


@dataclasses.dataclass
class LayerFlops:
  path: str
  kind: str
  macs: int
  macs_valid: int
  forward_matmul: int = 0  # conv/dot flops in the forward pass
  forward_other: int = 0  # elementwise/reduce flops in the forward pass (BN, shift taps)
  backward_matmul: int = 0
  backward_other: int = 0
  transcendentals: int = 0

  @property
  def expected(self) -> int:
    """2 x valid MACs: what XLA counts for this layer's conv or dot."""
    return 2 * self.macs_valid

  @property
  def status(self) -> str:
    if self.kind == 'batchnorm':
      return ''
    if self.forward_matmul == self.expected:
      return 'exact'
    if self.forward_matmul == 0:
      return 'no conv op'
    return 'differs'


@dataclasses.dataclass
class Reconciliation:
  layers: list[LayerFlops]
  outside: dict[str, int]  # opcode -> flops of ops attributed to no layer
  hlo_flops: int
  xla_flops: float | None

  @property
  def macs(self) -> int:
    return sum(layer.macs for layer in self.layers)

  @property
  def macs_valid(self) -> int:
    return sum(layer.macs_valid for layer in self.layers)

  def total(self, field: str) -> int:
    return sum(getattr(layer, field) for layer in self.layers)

  @property
  def unexplained(self) -> int:
    """HLO total minus the sum of the attributed parts: 0 by construction unless ops were lost."""
    parts = sum(self.total(f) for f in ('forward_matmul', 'forward_other', 'backward_matmul',
                                        'backward_other'))
    return self.hlo_flops - parts - sum(self.outside.values())

  def summary(self) -> dict[str, Any]:
    convs = [layer for layer in self.layers if layer.kind != 'batchnorm']
    return dict(
        macs=self.macs, padding_macs=self.macs - self.macs_valid, macs_valid=self.macs_valid,
        expected_matmul_flops=2 * self.macs_valid,
        forward_matmul=self.total('forward_matmul'), forward_other=self.total('forward_other'),
        backward_matmul=self.total('backward_matmul'),
        backward_other=self.total('backward_other'), outside_layers=sum(self.outside.values()),
        outside_by_opcode=dict(sorted(self.outside.items(), key=lambda kv: -kv[1])),
        hlo_flops=self.hlo_flops, xla_flops=self.xla_flops, unexplained=self.unexplained,
        layers_exact=sum(layer.status == 'exact' for layer in convs), layers=len(convs))


def attribute(op_name: str, paths: set[str]) -> tuple[str | None, bool]:
  """(layer path or None, is-backward) from an op's metadata op_name."""
  layer = None
  for segment in op_name.split('/'):
    for token in _TOKEN.findall(segment):
      if token in paths:
        layer = token
  return layer, 'transpose(' in op_name


def _by_shape(conv: ConvOp, layer_rows: Sequence[LayerCost],
              used: collections.Counter[str]) -> str | None:
  """The layer a convolution without source metadata computes a gradient of, from shapes.

  XLA:CPU rewrites depthwise filter gradients into new convolutions and drops their
  metadata. A filter gradient reads the layer's input and output gradient (in any layout);
  an input gradient reads the output gradient and writes the input's shape. Among equal
  candidates (repeated blocks) the least-used one is taken, so the flops land on layers of
  the right shape either way.
  """
  lhs, rhs, out = sorted(conv.lhs), sorted(conv.rhs), sorted(conv.out)
  candidates = [row.path for row in layer_rows if row.kind != 'batchnorm' and (
      (lhs == sorted(row.in_shape) and rhs == sorted(row.out_shape))
      or (lhs == sorted(row.out_shape) and out == sorted(row.in_shape)))]
  if not candidates:
    return None
  path = min(candidates, key=lambda p: used[p])
  used[path] += 1
  return path


def _dot_by_shape(dot: DotOp, layer_rows: Sequence[LayerCost],
                  used: collections.Counter[str]) -> tuple[str | None, bool]:
  """(layer, is-backward) of a dot without source metadata (XLA:CPU drops it on dots with one
  row, e.g. at batch 1), from shapes: the forward writes the layer's output from its input,
  the backward writes the input's gradient or the kernel's. Linear layers and pointwise convs
  (compiled as dots on CPU) are candidates; among equal ones the least-used is taken."""
  forward, backward = [], []
  for row in layer_rows:
    if row.kind not in ('linear', 'pointwise'):
      continue
    n_in, n_out = row.in_shape[-1], row.out_shape[-1]
    if (math.prod(dot.out) == math.prod(row.out_shape)
        and math.prod(dot.lhs) == math.prod(row.in_shape)):
      forward.append(row.path)
    elif math.prod(dot.out) == math.prod(row.in_shape) or sorted(dot.out) == sorted((n_in, n_out)):
      backward.append(row.path)
  candidates = forward or backward
  if not candidates:
    return None, False
  path = min(candidates, key=lambda p: used[p])
  used[path] += 1
  return path, not forward


def reconcile(cost: HloCost, layer_rows: Sequence[LayerCost],
              xla_flops: float | None = None) -> Reconciliation:
  layers = {row.path: LayerFlops(row.path, row.kind, row.macs, row.macs_valid)
            for row in layer_rows}
  outside: collections.Counter[str] = collections.Counter()
  paths = set(layers)
  convs = {conv.name: conv for conv in cost.convolutions}
  dots = {dot.name: dot for dot in cost.dots}
  fallback: collections.Counter[str] = collections.Counter()
  for op in cost.ops:
    path, backward = attribute(op.op_name, paths)
    if path is None and op.name in convs:
      path, backward = _by_shape(convs[op.name], layer_rows, fallback), True
    elif path is None and op.name in dots and not op.op_name:
      path, backward = _dot_by_shape(dots[op.name], layer_rows, fallback)
    if path is None:
      if op.flops:
        outside[op.opcode] += op.flops
      continue
    layer = layers[path]
    layer.transcendentals += op.transcendentals
    field = ('backward_' if backward else 'forward_') + (
        'matmul' if op.category in MATMUL else 'other')
    setattr(layer, field, getattr(layer, field) + op.flops)
  return Reconciliation(list(layers.values()), dict(outside), cost.flops, xla_flops)


def _n(value: Any) -> str:
  return '-' if value is None else f'{value:,.0f}'


def format_reconciliation(rec: Reconciliation, *, per_layer: bool = True) -> str:
  """Markdown: the model-level bridge, then (optionally) one row per layer."""
  s = rec.summary()
  expected = s['expected_matmul_flops']
  bwd_ratio = (f" ({s['backward_matmul'] / expected:.2f} x 2 x valid MACs)"
               if expected and s['backward_matmul'] else '')
  lines = [
      '| step | count |', '|---|---|',
      f"| MACs over every tap (analytic, conv + linear) | {_n(s['macs'])} |",
      f"| - taps that fall on padding | {_n(s['padding_macs'])} |",
      f"| = valid-tap MACs | {_n(s['macs_valid'])} |",
      f"| x 2 = conv/dot flops XLA should count in the forward pass | {_n(expected)} |",
      f"| compiled conv/dot flops, forward ({s['layers_exact']} of {s['layers']} layers exact) "
      f"| {_n(s['forward_matmul'])} |",
      f"| compiled conv/dot flops, backward{bwd_ratio} | {_n(s['backward_matmul'])} |",
      f"| elementwise/reduce flops inside layers, forward (BatchNorm, shift-and-add taps) "
      f"| {_n(s['forward_other'])} |",
      f"| elementwise/reduce flops inside layers, backward | {_n(s['backward_other'])} |",
  ]
  for opcode, flops in list(s['outside_by_opcode'].items())[:8]:
    lines.append(f'| outside layers: {opcode} (activations, residuals, pooling, loss, update) '
                 f'| {_n(flops)} |')
  rest = sum(list(s['outside_by_opcode'].values())[8:])
  if rest:
    lines.append(f'| outside layers: other opcodes | {_n(rest)} |')
  lines += [f"| = flops counted from the optimized HLO | {_n(s['hlo_flops'])} |",
            f"| XLA's cost analysis | {_n(s['xla_flops'])} |"]
  if s['xla_flops'] is not None:
    lines.append(f"| HLO count - XLA (XLA sums in float32) | {s['hlo_flops'] - s['xla_flops']:,.0f} |")
  if s['unexplained']:
    lines.append(f"| unattributed (a bug if not 0) | {_n(s['unexplained'])} |")
  if not per_layer:
    return '\n'.join(lines) + '\n'
  header = ('layer', 'kind', 'MACs', 'valid MACs', '2 x valid', 'fwd conv/dot', 'check',
            'fwd other', 'bwd conv/dot', 'bwd / 2x valid', 'bwd other')
  rows = [header]
  for layer in rec.layers:
    ratio = (f'{layer.backward_matmul / layer.expected:.2f}'
             if layer.backward_matmul and layer.expected else '-')
    rows.append((layer.path, layer.kind, _n(layer.macs), _n(layer.macs_valid),
                 _n(layer.expected), _n(layer.forward_matmul), layer.status,
                 _n(layer.forward_other), _n(layer.backward_matmul), ratio,
                 _n(layer.backward_other)))
  lines += ['', '| ' + ' | '.join(header) + ' |']
  lines.append('|' + '---|' * len(header))
  for row in rows[1:]:
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines) + '\n'
