"""An op census of optimized HLO text: what the compiler actually emitted.

Counts instructions by opcode, separately at top level (what runs as a kernel or a call)
and inside fused computations; classifies convolutions as depthwise / grouped / dense by
their feature_group_count, and custom calls by target (cuDNN and cuBLAS calls on GPU; the
native depthwise kernels on CPU, `sepnets_dw_*`, count as depthwise convolutions).
"""

from __future__ import annotations

import collections
import dataclasses
import re

_COMPUTATION = re.compile(r'^\s*(?:ENTRY\s+)?(%?[\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+(?P<op>[a-z][\w\-]*)\((?P<args>.*)$')
_OPERAND = re.compile(r'%?([\w.\-]+)')
_CALLS = re.compile(r'calls=(%?[\w.\-]+)')
_FGC = re.compile(r'feature_group_count=(\d+)')
_DIM_LABELS = re.compile(r'dim_labels=(\w+)_')
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_SHAPE = re.compile(r'\w+\[([\d,]*)\]')
_FUSION_KIND = re.compile(r'kind=(k\w+)')


@dataclasses.dataclass(frozen=True)
class Census:
  top_level: dict[str, int]  # opcode -> count outside fused computations
  fused: dict[str, int]  # opcode -> count inside fused computations
  convolutions: dict[str, int]  # depthwise | grouped | dense -> count (anywhere)
  custom_calls: dict[str, int]  # target -> count
  fusions: dict[str, int]  # fusion kind (kLoop, kInput, kOutput, kCustom) -> count

  @property
  def copies(self) -> int:
    return self.top_level.get('copy', 0) + self.fused.get('copy', 0)

  @property
  def transposes(self) -> int:
    return self.top_level.get('transpose', 0) + self.fused.get('transpose', 0)


def _dims(type_text: str) -> list[int] | None:
  shape = _SHAPE.search(type_text)
  return [int(d) for d in shape.group(1).split(',') if d] if shape else None


def _conv_kind(line: str, args: str, types: dict[str, str]) -> str:
  """depthwise (groups = lhs features), grouped, or dense, from the operand's definition."""
  groups = int(m.group(1)) if (m := _FGC.search(line)) else 1
  if groups == 1:
    return 'dense'
  labels = m.group(1) if (m := _DIM_LABELS.search(line)) else None
  operand = _OPERAND.match(args.strip())
  lhs_type = types.get(operand.group(1)) if operand else None
  dims = _dims(lhs_type) if lhs_type else None
  if not dims or not labels or 'f' not in labels or labels.index('f') >= len(dims):
    return 'grouped'
  return 'depthwise' if dims[labels.index('f')] == groups else 'grouped'


def hlo_census(hlo_text: str) -> Census:
  """Census of an optimized HLO module's text (`compiled.as_text()`)."""
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    if (m := _COMPUTATION.match(line)):
      current = m.group(1).lstrip('%')
      bodies[current] = []
    elif line.strip() == '}':
      current = None
    elif current is not None:
      bodies[current].append(line)
  fused_names = set()
  for lines in bodies.values():
    for line in lines:
      if (m := _INSTRUCTION.match(line)) and m.group('op') == 'fusion' and (c := _CALLS.search(line)):
        fused_names.add(c.group(1).lstrip('%'))
  top, fused = collections.Counter(), collections.Counter()
  convs, calls, fusion_kinds = collections.Counter(), collections.Counter(), collections.Counter()
  for name, lines in bodies.items():
    counter = fused if name in fused_names else top
    parsed = [m for line in lines if (m := _INSTRUCTION.match(line))]
    types = {m.group('name'): m.group('type') for m in parsed}
    for m in parsed:
      line, op = m.string, m.group('op')
      if op in ('parameter', 'constant', 'get-tuple-element', 'tuple'):
        continue
      counter[op] += 1
      if op == 'convolution':
        convs[_conv_kind(line, m.group('args'), types)] += 1
      elif op == 'custom-call':
        target = t.group(1) if (t := _TARGET.search(line)) else '?'
        calls[target] += 1
        if target.startswith('sepnets_dw_'):  # the native depthwise kernels (forward, grads)
          convs['depthwise'] += 1
        elif 'conv' in target.lower():
          convs[_conv_kind(line, m.group('args'), types)] += 1
      elif op == 'fusion' and (k := _FUSION_KIND.search(line)):
        fusion_kinds[k.group(1)] += 1
  return Census(top_level=dict(top), fused=dict(fused), convolutions=dict(convs),
                custom_calls=dict(calls), fusions=dict(fusion_kinds))
