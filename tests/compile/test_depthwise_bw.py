"""The depthwise roofline table: compulsory bytes, the copy bandwidth it is compared with, and
the mobilenet_v2 shapes it covers."""

import pytest

from sepnets.compile.depthwise_bw import (DepthwiseShape, format_markdown, measure,
                                          model_depthwise_shapes)
from sepnets.compile.peaks import Peaks


def test_compulsory_bytes():
  shape = DepthwiseShape(channels=8, kernel=3, stride=2, size=9)
  x, y, k = 2 * 81 * 8 * 4, 2 * 25 * 8 * 4, 9 * 8 * 4
  assert shape.out_size == 5
  assert shape.bytes(2) == {'forward': x + k + y, 'backward': y + x + k + x + k}


def test_mobilenet_v2_depthwise_shapes():
  shapes = model_depthwise_shapes('mobilenet_v2')
  assert len(shapes) == 10 and len(set(shapes)) == 10
  assert shapes[0] == DepthwiseShape(32, 3, 1, 112) and shapes[-1] == DepthwiseShape(960, 3, 1, 7)
  assert sum(s.stride == 2 for s in shapes) == 4


def test_fraction_is_achieved_over_copy_bandwidth():
  peaks = Peaks('cpu', 'cpu', {'float32': 1e11}, {2**10: 4e9, 2**30: 1e9})
  rows = measure([DepthwiseShape(16, 3, 1, 12)], ['grouped', 'shift', 'native'], peaks, batch=2,
                 repeats=2)
  assert [r['strategy'] for r in rows] == ['grouped', 'shift', 'native']
  for r in rows:
    for name in ('forward', 'backward'):
      seconds = r[f'{name}_ms'] / 1e3
      assert r[f'{name}_gbps'] == pytest.approx(r[f'{name}_bytes'] / seconds / 1e9)
      assert r[f'{name}_copy_gbps'] == 4.0  # a few KB: the small working set's bandwidth
      assert r[f'{name}_fraction'] == pytest.approx(r[f'{name}_gbps'] / 4.0)
  assert '| 16, 3x3, s1, 12x12 | 2 | shift |' in format_markdown(rows, peaks)
