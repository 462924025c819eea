"""The depthwise roofline table: compulsory bytes, the copy bandwidth it is compared with, and
the mobilenet_v2 shapes it covers."""

import pytest

from sepnets.compile.depthwise_bw import (DepthwiseShape, format_markdown, measure,
                                          model_depthwise_shapes)
from sepnets.compile.peaks import measure_copy


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


def test_fraction_is_achieved_over_copy_bandwidth_on_the_same_working_set():
  asked = []

  def copy(moved):
    asked.append(moved)
    return 4e9

  shape = DepthwiseShape(16, 3, 1, 12)
  rows = measure([shape], ['grouped', 'shift', 'native'], batch=2, repeats=2,
                 copy_bandwidth=copy)
  assert [r['strategy'] for r in rows] == ['grouped', 'shift', 'native']
  # the copy moves the bytes each pass moves, measured once per size
  assert asked == [shape.bytes(2)['forward'], shape.bytes(2)['backward']]
  for r in rows:
    for name in ('forward', 'backward'):
      seconds = r[f'{name}_ms'] / 1e3
      assert r[f'{name}_gbps'] == pytest.approx(r[f'{name}_bytes'] / seconds / 1e9)
      assert r[f'{name}_copy_gbps'] == 4.0
      assert r[f'{name}_fraction'] == pytest.approx(r[f'{name}_gbps'] / 4.0)
      # the fastest run against the copy's fastest: never below the median's fraction
      fastest = r[f'{name}_fastest_ms'] / 1e3
      assert fastest <= seconds
      assert r[f'{name}_fastest_fraction'] == pytest.approx(
          r[f'{name}_bytes'] / fastest / 4e9)
  assert '| 16, 3x3, s1, 12x12 | 2 | shift |' in format_markdown(rows)


def test_copy_bandwidth_is_measured_at_the_size_asked():
  import jax
  moved = 2 * 3 * 2**20
  bandwidth = measure_copy(jax.devices()[0], moved // 2, repeats=3)
  assert 1e8 < bandwidth < 1e13  # bytes moved per second, plausible for any machine


def test_copy_is_timed_alternately_with_each_layer_pass(monkeypatch):
  """Without a given bandwidth, each pass's copy is timed in the same rounds as the layer:
  one compiled copy per working-set size, called once per round (plus its untimed lead-in)."""
  import sepnets.compile.depthwise_bw as bw
  made, calls = [], []

  def fake_copy_call(device, size_bytes):
    made.append(size_bytes)
    return (lambda: calls.append(size_bytes)), 2 * size_bytes

  monkeypatch.setattr(bw, 'copy_call', fake_copy_call)
  shape = DepthwiseShape(16, 3, 2, 12)
  rows = measure([shape], ['native', 'shift'], batch=2, repeats=3)
  moved = shape.bytes(2)
  assert made == [moved['forward'] // 2, moved['backward'] // 2]  # compiled once per size
  # two strategies x two passes x (1 warm-up + 3 rounds of lead-in + timed call)
  assert len(calls) == 2 * 2 * (1 + 3 * 2)
  for r in rows:
    assert r['repeats'] == 3
    for name in ('forward', 'backward'):
      assert r[f'{name}_copy_gbps'] > 0
      assert r[f'{name}_fraction'] == pytest.approx(r[f'{name}_gbps'] / r[f'{name}_copy_gbps'])
  assert 'fastest of 3, timed alternately with the layer' in format_markdown(rows)
