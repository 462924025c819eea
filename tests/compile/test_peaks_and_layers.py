"""The roofline's arithmetic and the layer workloads the bench builds."""

import pytest

from sepnets.compile.layer_workloads import (LayerSpec, layer_workload, model_shapes,
                                             resolve_layer_sets, worked_example)
from sepnets.compile.peaks import Peaks
from sepnets.summary import model_layer_costs

PEAKS = Peaks('cpu', 'cpu', {'float32': 100e9}, {2**20: 50e9, 64 * 2**20: 10e9})


def test_bandwidth_is_taken_at_the_nearest_working_set():
  assert PEAKS.bandwidth_for(2**20) == 50e9
  assert PEAKS.bandwidth_for(4 * 2**20) == 50e9  # log-nearer to 1 MiB than to 64 MiB
  assert PEAKS.bandwidth_for(16 * 2**20) == 10e9
  assert PEAKS.bandwidth_for(0) == 50e9


def test_roofline_is_the_slower_of_compute_and_traffic():
  # 1 GFLOP over 1 MB in cache: compute-bound, 10 ms
  assert PEAKS.roofline_seconds(1e9, 1e6, 2**20) == pytest.approx(1e-2)
  # 1 GFLOP over 1 GB out of cache: 0.1 s of traffic
  assert PEAKS.roofline_seconds(1e9, 1e9, 2**30) == pytest.approx(0.1)
  # an unmeasured dtype falls back to the best measured peak
  assert PEAKS.roofline_seconds(1e9, 0, 0, 'bfloat16') == pytest.approx(1e-2)
  assert PEAKS.to_json()['copy_gb_per_s'] == {'1048576': 50.0, '67108864': 10.0}


def test_worked_example_layers_have_the_mission_counts():
  params = {}
  for spec in worked_example():
    _, rows = layer_workload(spec, batch=1)
    params[spec.layer] = sum(r.params for r in rows)
  assert params == {'standard': 589_824, 'depthwise': 2_304, 'pointwise': 65_536,
                    'separable': 67_840}


def test_model_shapes_are_the_distinct_depthwise_and_pointwise_layers():
  specs = model_shapes('mobilenet_v2')
  rows, _ = model_layer_costs('mobilenet_v2', batch=1)
  layers = [r for r in rows if r.kind in ('depthwise', 'pointwise')]
  distinct = {(r.kind, r.in_shape, r.out_shape) for r in layers}
  assert len(specs) == len(distinct) == 29 and len(set(specs)) == len(specs)
  assert LayerSpec('depthwise', 144, 144, 3, 2, 56, 'symmetric', 'mobilenet_v2') in specs
  for spec in specs:  # each spec rebuilds its layer with the model's shapes and params
    _, (row,) = layer_workload(spec, batch=1)
    match = [r for r in layers if (r.kind, r.in_shape[1:], r.out_shape[1:]) ==
             (spec.layer, row.in_shape[1:], row.out_shape[1:])]
    assert match and row.params == match[0].params and row.macs == match[0].macs


def test_unknown_layer_set_names_the_model():
  with pytest.raises(ValueError, match='resnet50'):
    resolve_layer_sets('worked,resnet50')
  assert resolve_layer_sets('none') == ()
