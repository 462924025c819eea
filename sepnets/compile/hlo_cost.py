"""Flops, transcendentals and bytes counted from optimized HLO text, op by op.

XLA's cost analysis gives one total per compiled function, and nothing at all for deviceless
GPU compilation. This module parses the optimized HLO (`compiled.as_text()`) and applies the
counting rules of XLA's base `HloCostAnalysis` to every instruction, so that

- the totals can be checked against XLA's own where it reports them (CPU, TPU: transcendentals
  agree exactly on the zoo and flops up to XLA's float32 accumulator, a few parts in 10^7;
  bytes are an approximation, see below);
- GPU targets get the same counts from their cuDNN/cuBLAS custom calls;
- every flop is attributed to an op and a category (convolution, dot, elementwise, reduce),
  which is what the per-layer reconciliation in `sepnets.compile.reconcile` needs.

Rules (XLA's `HloCostAnalysis`): elementwise ops (compare, select, clamp, convert and
bitcast-convert included) 1 flop per output element, transcendental ones (exp, log, tanh,
logistic, rsqrt, sqrt, power, ...) 1 transcendental per element instead; dot 2 x output elements x contracted size;
convolution 2 x MACs over valid taps only, divided by feature_group_count and
batch_group_count; reduce (input elements - output elements) x the reducer's flops;
reduce-window (window elements - 1) x output elements x the reducer's flops; fusions the sum
of their fused instructions; scatter the combiner's flops per update element; sort
n x ceil(log2 n); while loops one trip (body and condition); data movement (copy, transpose, broadcast, slice, pad, ...) 0.

Deliberate differences:
- cuDNN convolution custom calls are counted as the convolution they compute (a backward-
  input or backward-filter call does as many MACs as its forward conv); XLA's GPU analysis
  applies the forward formula to the custom call's operands as they come.
- sepnets' own depthwise kernels (XLA:CPU custom calls, `sepnets.layers.depthwise.native`)
  are counted as the depthwise convolution they compute, 2 x MACs over valid taps (the input
  and tap gradients as many as the forward; the eval-mode call with BatchNorm and activation
  fused in counts its convolution only); XLA counts no flops for a custom call, so its total
  is lower by exactly these.
- XLA's GPU analysis weighs elementwise ops by a per-op throughput profile (default 3
  'flops' per element); here every target uses 1, so the counts compare across targets.
- bytes accessed: every top-level instruction's operands plus outputs, zero for parameters,
  constants, tuples, get-tuple-element and bitcasts; a fusion reads each parameter as XLA's
  `FusionParameterReadBytes` has it (the slices it takes, the whole parameter again for each
  broadcast or reshape of it, one shared read for all other uses). XLA refines some
  non-fusion ops with operand utilization, so the two can differ slightly.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re

_COMPUTATION = re.compile(r'^\s*(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$')
_HEAD = re.compile(r'^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+'
                   r'(?P<op>[a-z][\w\-]*)\(')
_ARRAY = re.compile(r'([a-z]\w*)\[([\d,]*)\]')
_NAME = re.compile(r'%([\w.\-]+)')

ELEMENT_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2,
                 's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8,
                 'c128': 16, 'f8e4m3fn': 1, 'f8e5m2': 1, 'f8e4m3fnuz': 1, 'f8e5m2fnuz': 1,
                 'f8e4m3': 1, 'f8e3m4': 1, 's4': 1, 'u4': 1, 'token': 0}

TRANSCENDENTAL = frozenset({
    'erf', 'exponential', 'log', 'logistic', 'power', 'sqrt', 'cbrt', 'rsqrt', 'tanh', 'sine',
    'cosine', 'exponential-minus-one', 'log-plus-one', 'atan2', 'tan', 'acosh'})
ELEMENTWISE = frozenset({
    'abs', 'add', 'and', 'bitcast-convert', 'ceil', 'clamp', 'clz', 'compare', 'complex', 'convert', 'divide',
    'floor', 'imag', 'is-finite', 'maximum', 'minimum', 'multiply', 'negate', 'not', 'or',
    'popcnt', 'real', 'reduce-precision', 'remainder', 'round-nearest-afz',
    'round-nearest-even', 'select', 'shift-left', 'shift-right-arithmetic',
    'shift-right-logical', 'sign', 'subtract', 'xor'}) | TRANSCENDENTAL
NO_TRAFFIC = frozenset({'parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast',
                        'after-all', 'add-dependency', 'domain', 'partition-id', 'replica-id'})
CUDNN_CONV = {'__cudnn$convForward': 'forward', '__cudnn$convBiasActivationForward': 'forward',
              '__cudnn$convBackwardInput': 'backward_input',
              '__cudnn$convBackwardFilter': 'backward_filter'}
CUBLAS_GEMM = ('__cublas$gemm', '__cublas$lt$matmul')
NATIVE_DEPTHWISE = {'sepnets_dw_conv': 'native', 'sepnets_dw_conv_bias_act': 'native',
                    'sepnets_dw_act_conv_bias_act': 'native',
                    'sepnets_dw_tap_grad': 'native_tap_grad'}
NATIVE_SUMS = 'sepnets_channel_sums'
"""BatchNorm's native one-pass sums (sum a, sum a * b): 3 flops per input element, counted as
a reduction (XLA counts none for a custom call)."""


@dataclasses.dataclass(frozen=True)
class Array:
  dtype: str
  dims: tuple[int, ...]

  @property
  def elements(self) -> int:
    return math.prod(self.dims)

  @property
  def nbytes(self) -> int:
    return self.elements * ELEMENT_BYTES.get(self.dtype, 4)


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  opcode: str
  shapes: tuple[Array, ...]  # one array, or the leaves of a tuple
  is_tuple: bool
  operands: tuple[str, ...]
  args: str  # the text inside the parentheses (a parameter's index, a constant's value)
  attrs: str  # everything after the operand list

  @property
  def shape(self) -> Array:
    return self.shapes[0]

  def attr(self, key: str) -> str | None:
    m = re.search(rf'(?:^|[\s,]){re.escape(key)}=(\{{[^{{}}]*\}}|"[^"]*"|%?[\w.\-$>]+)', self.attrs)
    return m.group(1).strip('{}"').lstrip('%') if m else None


@dataclasses.dataclass(frozen=True)
class ConvOp:
  """One convolution as compiled (an HLO convolution, a cuDNN or a native-kernel custom call)."""
  name: str
  kind: str  # 'convolution' | 'forward' | 'backward_input' | 'backward_filter' | 'native' | ...
  lhs: tuple[int, ...]
  rhs: tuple[int, ...]
  out: tuple[int, ...]
  dim_labels: str
  window: str
  feature_groups: int
  batch_groups: int
  flops: int
  op_name: str  # the JAX op path from the metadata ('' when absent)
  fused_in: str | None  # the top-level fusion that holds it, if any


@dataclasses.dataclass(frozen=True)
class DotOp:
  name: str
  lhs: tuple[int, ...]
  rhs: tuple[int, ...]
  out: tuple[int, ...]
  flops: int
  op_name: str
  fused_in: str | None


@dataclasses.dataclass(frozen=True)
class OpCount:
  """The flops of one counted HLO instruction (fused ones included)."""
  name: str
  opcode: str
  category: str  # convolution | dot | elementwise | reduce | transcendental
  flops: int
  transcendentals: int
  op_name: str  # the JAX op path from the metadata ('' when absent)


@dataclasses.dataclass(frozen=True)
class HloCost:
  flops: int
  transcendentals: int
  bytes_accessed: int
  ops: tuple[OpCount, ...]
  convolutions: tuple[ConvOp, ...]
  dots: tuple[DotOp, ...]

  @property
  def flops_by_category(self) -> dict[str, int]:
    out: collections.Counter[str] = collections.Counter()
    for op in self.ops:
      if op.flops:
        out[op.category] += op.flops
    return dict(out)

  @property
  def flops_by_opcode(self) -> dict[str, int]:
    out: collections.Counter[str] = collections.Counter()
    for op in self.ops:
      if op.flops:
        out[op.opcode] += op.flops
    return dict(out)


# --- parsing ------------------------------------------------------------------------------


def _arrays(type_text: str) -> tuple[Array, ...]:
  return tuple(Array(m.group(1), tuple(int(d) for d in m.group(2).split(',') if d))
               for m in _ARRAY.finditer(type_text))


def _split_call(line: str, start: int) -> tuple[str, str]:
  """The text inside the parentheses opening at `start` - 1, and what follows them."""
  depth = 1
  for i in range(start, len(line)):
    if line[i] == '(':
      depth += 1
    elif line[i] == ')':
      depth -= 1
      if depth == 0:
        return line[start:i], line[i + 1:]
  return line[start:], ''


def parse_instruction(line: str) -> Instruction | None:
  m = _HEAD.match(line)
  if not m:
    return None
  inside, rest = _split_call(line, m.end())
  type_text = m.group('type')
  return Instruction(name=m.group('name'), opcode=m.group('op'), shapes=_arrays(type_text),
                     is_tuple=type_text.lstrip().startswith('('),
                     operands=tuple(_NAME.findall(inside)), args=inside, attrs=rest)


def parse_module(hlo_text: str) -> tuple[dict[str, list[Instruction]], str | None]:
  """Computations by name (instructions in order) and the entry computation's name."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    if (m := _COMPUTATION.match(line)):
      current = m.group(2)
      computations[current] = []
      if m.group(1):
        entry = current
    elif line.strip() == '}':
      current = None
    elif current is not None and (inst := parse_instruction(line)):
      computations[current].append(inst)
  return computations, entry


# --- counting -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Window:
  size: tuple[int, ...]
  stride: tuple[int, ...]
  pad: tuple[tuple[int, int], ...]
  lhs_dilate: tuple[int, ...]
  rhs_dilate: tuple[int, ...]


def parse_window(text: str | None, rank: int) -> Window:
  fields = dict(part.split('=', 1) for part in (text or '').split() if '=' in part)

  def dims(key, default):
    return tuple(int(v) for v in fields[key].split('x')) if key in fields else (default,) * rank

  size = dims('size', 1)
  rank = len(size)
  pads = tuple(tuple(int(v) for v in p.split('_')) for p in fields['pad'].split('x')) \
      if 'pad' in fields else ((0, 0),) * rank
  return Window(size=size, stride=dims('stride', 1), pad=pads,
                lhs_dilate=dims('lhs_dilate', 1), rhs_dilate=dims('rhs_dilate', 1))


def _valid_positions(inp: int, kernel: int, out: int, stride: int, pad: tuple[int, int],
                     base_dil: int, win_dil: int) -> int:
  """Kernel taps x output positions that read a real (not padded, not dilated-in) input."""
  count = 0
  for k in range(kernel):
    for o in range(out):
      undilated = o * stride - pad[0] + k * win_dil
      if undilated % base_dil:
        continue
      if 0 <= undilated // base_dil < inp:
        count += 1
  return count


def conv_flops(lhs: tuple[int, ...], rhs: tuple[int, ...], out: tuple[int, ...],
               dim_labels: str, window: Window, feature_groups: int = 1,
               batch_groups: int = 1) -> int:
  """2 x MACs over valid taps of a convolution, XLA's formula."""
  lhs_labels, rest = dim_labels.split('_', 1)
  rhs_labels, out_labels = rest.split('->')
  spatial = [c for c in lhs_labels if c.isdigit()]
  positions = 1
  for i, s in enumerate(sorted(spatial)):
    positions *= _valid_positions(
        lhs[lhs_labels.index(s)], rhs[rhs_labels.index(s)], out[out_labels.index(s)],
        window.stride[i], window.pad[i], window.lhs_dilate[i], window.rhs_dilate[i])
  in_features = lhs[lhs_labels.index('f')]
  out_features = out[out_labels.index('f')]
  batch = lhs[lhs_labels.index('b')]
  return 2 * (in_features // feature_groups) * out_features * (batch // batch_groups) * positions


def _dims_attr(inst: Instruction, key: str) -> tuple[int, ...]:
  value = inst.attr(key)
  return tuple(int(v) for v in value.split(',') if v.strip()) if value else ()


def _op_name(inst: Instruction) -> str:
  m = re.search(r'op_name="([^"]*)"', inst.attrs)
  return m.group(1) if m else ''


class _Counter:

  def __init__(self, computations: dict[str, list[Instruction]]):
    self.computations = computations
    self.defs = {i.name: i for insts in computations.values() for i in insts}
    self.ops: list[OpCount] = []
    self.convs: list[ConvOp] = []
    self.dots: list[DotOp] = []
    self._sub_cache: dict[str, tuple[int, int]] = {}

  def shape_of(self, name: str) -> Array:
    return self.defs[name].shape

  def subcomputation(self, name: str | None) -> tuple[int, int]:
    """(flops, transcendentals) of one application of a reducer-like computation."""
    if not name:
      return 0, 0
    if name not in self._sub_cache:
      flops = trans = 0
      for inst in self.computations.get(name, []):
        if inst.opcode in TRANSCENDENTAL:
          trans += inst.shape.elements
        elif inst.opcode in ELEMENTWISE:
          flops += inst.shape.elements
      self._sub_cache[name] = (flops, trans)
    return self._sub_cache[name]

  def count(self, inst: Instruction, fused_in: str | None, record: bool = True) -> tuple[int, int]:
    """(flops, transcendentals) of one instruction; records per-op detail when `record`."""
    op = inst.opcode
    if op in TRANSCENDENTAL:
      self._record(inst, 'transcendental', 0, inst.shape.elements, record)
      return 0, inst.shape.elements
    if op in ELEMENTWISE:
      self._record(inst, 'elementwise', inst.shape.elements, 0, record)
      return inst.shape.elements, 0
    if op == 'fusion':
      flops = trans = 0
      for sub in self.computations.get(inst.attr('calls') or '', []):
        f, t = self.count(sub, fused_in or inst.name, record)
        flops, trans = flops + f, trans + t
      return flops, trans
    if op == 'convolution':
      return self._conv(inst, 'convolution', inst.operands[0], inst.operands[1], inst.shape,
                        fused_in, record), 0
    if op == 'dot':
      lhs, rhs = self.shape_of(inst.operands[0]), self.shape_of(inst.operands[1])
      contracted = math.prod(lhs.dims[d] for d in _dims_attr(inst, 'lhs_contracting_dims'))
      return self._dot(inst, lhs.dims, rhs.dims, inst.shape.dims, contracted, fused_in, record), 0
    if op == 'custom-call':
      return self._custom_call(inst, fused_in, record), 0
    if op in ('reduce', 'reduce-window', 'select-and-scatter', 'map'):
      flops, trans = self._reduction(inst)
      self._record(inst, 'reduce', flops, trans, record)
      return flops, trans
    if op == 'scatter':  # the combiner once per update element
      f, t = self.subcomputation(inst.attr('to_apply'))
      updates = self.shape_of(inst.operands[-1]).elements
      self._record(inst, 'reduce', f * updates, t * updates, record)
      return f * updates, t * updates
    if op == 'sort':  # XLA assumes a comparison sort: n x ceil(log2 n)
      n = self.shape_of(inst.operands[0]).elements
      flops = n * max(n - 1, 0).bit_length()
      self._record(inst, 'reduce', flops, 0, record)
      return flops, 0
    if op in ('rng', 'rng-bit-generator'):
      return 0, sum(a.elements for a in inst.shapes)
    return 0, 0

  def _record(self, inst: Instruction, category: str, flops: int, trans: int,
              record: bool) -> None:
    if record and (flops or trans):
      self.ops.append(OpCount(name=inst.name, opcode=inst.opcode, category=category,
                              flops=flops, transcendentals=trans, op_name=_op_name(inst)))

  def _reduction(self, inst: Instruction) -> tuple[int, int]:
    op = inst.opcode
    if op == 'select-and-scatter':
      f_sel, t_sel = self.subcomputation(inst.attr('select'))
      f_sc, t_sc = self.subcomputation(inst.attr('scatter'))
      source = self.shape_of(inst.operands[1]).elements
      win = math.prod(parse_window(inst.attr('window'), 1).size)
      return (f_sel * source * (win - 1) + f_sc * source,
              t_sel * source * (win - 1) + t_sc * source)
    f, t = self.subcomputation(inst.attr('to_apply'))
    out = inst.shape.elements
    if op == 'map':
      return f * out, t * out
    if op == 'reduce':
      count = self.shape_of(inst.operands[0]).elements - out
    else:
      window = parse_window(inst.attr('window'), len(inst.shape.dims))
      count = (math.prod(window.size) - 1) * out
      reduced = [i for i, s in enumerate(window.size) if s != 1]
      padded = [i for i, p in enumerate(window.pad) if p != (0, 0)]
      if len(reduced) == 1 and len(padded) == 1 and not inst.is_tuple:
        i = reduced[0]
        lo, hi = window.pad[i]
        if lo == hi != 0 and window.size[i] == 2 * lo + 1 and lo == inst.shape.dims[i] - 1:
          span = inst.shape.dims[i]
          count = out // span + span - 1
    return f * count, t * count

  def _conv(self, inst: Instruction, kind: str, lhs_name: str, rhs_name: str, out: Array,
            fused_in: str | None, record: bool) -> int:
    lhs, rhs = self.shape_of(lhs_name).dims, self.shape_of(rhs_name).dims
    labels = inst.attr('dim_labels') or ''
    window = parse_window(inst.attr('window'), len(lhs) - 2)
    fgc = int(inst.attr('feature_group_count') or 1)
    bgc = int(inst.attr('batch_group_count') or 1)
    # A cuDNN backward call's labels describe the forward conv; count that conv.
    fwd_lhs, fwd_rhs, fwd_out = {'backward_input': (out.dims, rhs, lhs),
                                 'backward_filter': (lhs, out.dims, rhs)}.get(
                                     kind, (lhs, rhs, out.dims))
    flops = conv_flops(fwd_lhs, fwd_rhs, fwd_out, labels, window, fgc, bgc)
    self._record(inst, 'convolution', flops, 0, record)
    if record:
      self.convs.append(ConvOp(name=inst.name, kind=kind, lhs=lhs, rhs=rhs, out=out.dims,
                               dim_labels=labels, window=inst.attr('window') or '',
                               feature_groups=fgc, batch_groups=bgc, flops=flops,
                               op_name=_op_name(inst), fused_in=fused_in))
    return flops

  def _dot(self, inst: Instruction, lhs: tuple[int, ...], rhs: tuple[int, ...],
           out: tuple[int, ...], contracted: int, fused_in: str | None, record: bool) -> int:
    flops = 2 * math.prod(out) * contracted
    self._record(inst, 'dot', flops, 0, record)
    if record:
      self.dots.append(DotOp(name=inst.name, lhs=lhs, rhs=rhs, out=out, flops=flops,
                             op_name=_op_name(inst), fused_in=fused_in))
    return flops

  def _custom_call(self, inst: Instruction, fused_in: str | None, record: bool) -> int:
    target = inst.attr('custom_call_target') or ''
    if target in CUDNN_CONV:
      return self._conv(inst, CUDNN_CONV[target], inst.operands[0], inst.operands[1],
                        inst.shapes[0], fused_in, record)
    if target in NATIVE_DEPTHWISE:
      return self._native_depthwise(inst, NATIVE_DEPTHWISE[target], fused_in, record)
    if target == NATIVE_SUMS:
      flops = 3 * self.shape_of(inst.operands[0]).elements
      self._record(inst, 'reduce', flops, 0, record)
      return flops
    if target in CUBLAS_GEMM:
      lhs, rhs = self.shape_of(inst.operands[0]), self.shape_of(inst.operands[1])
      config = _backend_config(inst)
      dnums = (config.get('gemm_backend_config') or {}).get('dot_dimension_numbers') or {}
      contracting = [int(d) for d in dnums.get('lhs_contracting_dimensions', [])]
      contracted = math.prod(lhs.dims[d] for d in contracting)
      return self._dot(inst, lhs.dims, rhs.dims, inst.shapes[0].dims, contracted, fused_in,
                       record)
    return 0

  def _native_depthwise(self, inst: Instruction, kind: str, fused_in: str | None,
                        record: bool) -> int:
    """2 x valid-tap MACs of the depthwise convolution a native kernel call computes."""
    attrs = {k: int(v) for k, v in re.findall(r'(\w+) = (-?\d+) : i64', inst.attrs)}
    first, second = (self.shape_of(name).dims for name in inst.operands[:2])
    out = inst.shapes[0].dims
    if kind == 'native_tap_grad':  # (x, g) -> taps
      (n, h, w, c), (oh, ow) = first, second[1:3]
    elif attrs.get('transposed'):  # (g, taps) -> dx
      (n, oh, ow, c), (h, w) = first, out[1:3]
    else:  # (x, taps) -> y
      (n, h, w, c), (oh, ow) = first, out[1:3]
    pairs = [sum(0 <= p * attrs['s' + a] + i * attrs['d' + a] - attrs['p' + a] < size
                 for p in range(out_len) for i in range(attrs['k' + a]))
             for a, size, out_len in (('h', h, oh), ('w', w, ow))]
    flops = 2 * n * c * pairs[0] * pairs[1]
    self._record(inst, 'convolution', flops, 0, record)
    if record:
      window = f"size={attrs['kh']}x{attrs['kw']} stride={attrs['sh']}x{attrs['sw']}"
      self.convs.append(ConvOp(name=inst.name, kind=kind, lhs=first, rhs=second, out=out,
                               dim_labels='b01f_01io->b01f', window=window, feature_groups=c,
                               batch_groups=1, flops=flops, op_name=_op_name(inst),
                               fused_in=fused_in))
    return flops

  # --- bytes ---

  def bytes_of(self, inst: Instruction) -> int:
    op = inst.opcode
    if op in NO_TRAFFIC or op == 'while' or op == 'conditional' or op == 'call':
      return 0
    out_bytes = inst.shapes[0].nbytes if (op == 'custom-call' and inst.is_tuple) \
        else sum(a.nbytes for a in inst.shapes)
    if op == 'slice':
      return 2 * inst.shape.nbytes
    if op == 'dynamic-slice':
      return 2 * inst.shape.nbytes + sum(self.shape_of(o).nbytes for o in inst.operands[1:])
    if op == 'dynamic-update-slice':
      return (2 * self.shape_of(inst.operands[1]).nbytes
              + sum(self.shape_of(o).nbytes for o in inst.operands[2:]))
    if op == 'fusion':
      return self._fusion_bytes(inst)
    return out_bytes + sum(self.shape_of(o).nbytes for o in inst.operands)

  def _fusion_bytes(self, inst: Instruction) -> int:
    body = self.computations.get(inst.attr('calls') or '', [])
    params = {i.name: int(i.args) for i in body if i.opcode == 'parameter'}
    users: dict[str, list[Instruction]] = collections.defaultdict(list)
    for i in body:
      for o in i.operands:
        users[o].append(i)
    total = 0
    root = body[-1] if body else None
    for pname, index in params.items():
      operand = self.shape_of(inst.operands[index]) if index < len(inst.operands) else None
      total += _parameter_read_bytes(pname, users.get(pname, []),
                                     operand.nbytes if operand is not None else 0)
    if root is not None and root.opcode == 'dynamic-update-slice':
      total += self.defs[root.operands[1]].shape.nbytes if root.operands[1] in self.defs else 0
    else:
      total += sum(a.nbytes for a in inst.shapes)
    return total


def _parameter_read_bytes(name: str, readers: list[Instruction], size: int) -> int:
  """Bytes a fusion reads of one parameter, by XLA's `FusionParameterReadBytes`: each slice
  (or dynamic slice of it) its own size, each broadcast or reshape of it the whole parameter,
  every other reader one shared read of the whole parameter."""
  total, shared = 0, False
  for u in readers:
    if u.opcode == 'slice' or (u.opcode == 'dynamic-slice' and u.operands[0] == name):
      total += u.shape.nbytes
    elif u.opcode in ('broadcast', 'reshape'):
      total += size
    elif not shared:
      shared = True
      total += size
  return total


def _backend_config(inst: Instruction) -> dict:
  m = re.search(r'backend_config=(\{.*\})\s*$', inst.attrs)
  if not m:
    return {}
  try:
    return json.loads(m.group(1))
  except json.JSONDecodeError:
    return {}


def hlo_cost(hlo_text: str) -> HloCost:
  """Counts of an optimized HLO module (`compiled.as_text()`), see the module docstring."""
  computations, entry = parse_module(hlo_text)
  if entry is None:
    raise ValueError('no ENTRY computation in the HLO text')
  counter = _Counter(computations)
  flops = trans = nbytes = 0
  for inst in _executed(computations, entry):
    f, t = counter.count(inst, None)
    flops, trans = flops + f, trans + t
    nbytes += counter.bytes_of(inst)
  return HloCost(flops=flops, transcendentals=trans, bytes_accessed=nbytes,
                 ops=tuple(counter.ops), convolutions=tuple(counter.convs),
                 dots=tuple(counter.dots))


def _executed(computations: dict[str, list[Instruction]], entry: str) -> list[Instruction]:
  """The entry's instructions with called computations inlined where they run: call and
  async-start bodies, while bodies and conditions once (XLA does not know the trip count
  either), every branch of a conditional (XLA takes the costliest one; the zoo has none)."""
  out: list[Instruction] = []
  for inst in computations[entry]:
    out.append(inst)
    names: list[str] = []
    if inst.opcode in ('call', 'async-start'):
      names = re.findall(r'(?:to_apply|calls)=%?([\w.\-]+)', inst.attrs)
    elif inst.opcode in ('while', 'conditional'):
      names = [n for key in ('body', 'condition', 'true_computation', 'false_computation')
               if (n := inst.attr(key))]
      if (branches := inst.attr('branch_computations')):
        names += [b.strip().lstrip('%') for b in branches.strip('{}').split(',')]
    for name in names:
      if name.lstrip('%') in computations:
        out += _executed(computations, name.lstrip('%'))
  return out
