"""The depthwise roofline table: compulsory bytes, the copy bandwidth it is compared with, and
the mobilenet_v2 shapes it covers."""

import pytest

from sepnets.compile.depthwise_bw import (DepthwiseShape, format_markdown, format_totals,
                                          measure, model_depthwise_shapes, strategies_for,
                                          strategy_totals)
from sepnets.compile.peaks import measure_copy


def test_compulsory_bytes():
  shape = DepthwiseShape(channels=8, kernel=3, stride=2, size=9)
  x, y, k = 2 * 81 * 8 * 4, 2 * 25 * 8 * 4, 9 * 8 * 4
  assert shape.out_size == 5
  assert shape.bytes(2) == {'forward': x + k + y, 'backward': y + x + k + x + k}
  assert shape.bytes(2, itemsize=2) == {'forward': (x + k + y) // 2,  # bf16: half the bytes
                                        'backward': (y + x + k + x + k) // 2}


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


def test_bfloat16_layers_move_half_the_bytes_and_say_so():
  shape = DepthwiseShape(16, 3, 1, 12)
  rows = measure([shape], ['shift'], batch=2, repeats=1, copy_bandwidth=lambda moved: 4e9,
                 dtype='bfloat16')
  assert rows[0]['dtype'] == 'bfloat16' and rows[0]['platform'] == 'cpu'
  assert rows[0]['forward_bytes'] == shape.bytes(2, 2)['forward']
  assert 'Depthwise layers (bfloat16 on cpu)' in format_markdown(rows)


def test_native_is_offered_on_the_cpu_only():
  assert strategies_for('cpu', ('grouped', 'shift', 'native')) == ('grouped', 'shift', 'native')
  assert strategies_for('gpu', ('grouped', 'shift', 'native')) == ('grouped', 'shift')
  assert strategies_for('tpu', ('native', 'auto')) == ('auto',)


def _row(strategy, channels, forward_ms, backward_ms):
  return {'strategy': strategy, 'channels': channels, 'kernel': 3, 'stride': 1, 'size': 7,
          'padding': 'symmetric', 'forward_ms': forward_ms, 'backward_ms': backward_ms,
          'platform': 'gpu'}


def test_strategy_totals_name_the_fastest_and_what_auto_runs():
  rows = [_row('grouped', 8, 1.0, 9.0), _row('shift', 8, 2.0, 3.0),
          _row('grouped', 16, 1.0, 9.0), _row('shift', 16, 2.0, 3.0),
          _row('shift', 32, 50.0, 50.0)]  # measured for one strategy only: left out of the sums
  totals = strategy_totals(rows)
  assert totals['shapes'] == 2
  assert totals['totals'] == {'grouped': {'forward_ms': 2.0, 'train_ms': 20.0},
                              'shift': {'forward_ms': 4.0, 'train_ms': 10.0}}
  assert totals['fastest_forward'] == 'grouped' and totals['fastest_train'] == 'shift'
  assert totals['auto'] == 'grouped'  # AUTO_CHOICE lists no GPU entry
  text = format_totals(totals)
  assert 'Fastest: `grouped` forward, `shift` forward + backward' in text
  assert '`auto` runs `grouped` on gpu: the fastest measured here' in text
  slow = [_row('grouped', 8, 9.0, 9.0), _row('shift', 8, 1.0, 1.0)]
  assert 'on gpu: not the fastest measured here' in format_totals(strategy_totals(slow))


def test_a_cpu_only_strategy_elsewhere_is_refused_by_name(monkeypatch):
  import jax
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  with pytest.raises(ValueError, match="'native' runs on the CPU only; this backend is 'gpu'"):
    measure([DepthwiseShape(16, 3, 1, 12)], ['shift', 'native'], batch=2, repeats=1,
            copy_bandwidth=lambda moved: 4e9)
