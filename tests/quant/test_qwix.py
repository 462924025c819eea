"""qwix (the `quant` extra): the behaviours that ruled it out, re-measured, and a cross-check of
our PTQ against it where it works."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepnets.quant import qwix_check
from sepnets.quant.calibrate import calibrate
from sepnets.quant.layers import LayerQuant, Rule, forward, quantize_model
from sepnets.quant.numerics import sqnr_db
from tests.quant.test_sensitivity import fragile_model


def test_the_evaluated_qwix_behaviours_still_hold():
  """If a qwix release fixes one of these, this fails: re-evaluate qwix then."""
  found = qwix_check.findings()
  assert len(found) == 5
  for name, finding in found.items():
    assert finding['holds'], f'{name}: {finding["detail"]}'


@pytest.fixture(scope='module')
def fragile():
  model = fragile_model()
  rng = np.random.default_rng(0)
  batches = [jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32) for _ in range(3)]
  return model, batches[0], batches[1:]


def ours(model, calibration, batches, per_channel):
  model = nnx.clone(model)
  quantize_model(model, [Rule('*', LayerQuant(per_channel=per_channel))])
  calibrate(model, [calibration])
  return np.concatenate([np.asarray(forward(model, b)) for b in batches])


def test_per_channel_ptq_agrees_with_qwix(fragile):
  """Per channel, folding BatchNorm changes nothing (each output channel's scale absorbs it), so
  two independent int8 implementations must agree on the same model and calibration data. The
  calibration is one image: qwix's static range is the mean of the per-example ranges of its
  calibration batch, ours the range over all calibration data; on one image they coincide."""
  model, calibration, batches = fragile
  calibration = calibration[:1]
  reference = qwix_check.logits(model, batches)
  mine = ours(model, calibration, batches, per_channel=True)
  theirs = qwix_check.logits(qwix_check.ptq_per_channel(model, calibration), batches)
  ours_db, qwix_db = sqnr_db(reference, mine), sqnr_db(reference, theirs)
  assert ours_db > 8 and qwix_db > 8
  assert abs(ours_db - qwix_db) < 1.5, (ours_db, qwix_db)
  assert sqnr_db(mine, theirs) > max(ours_db, qwix_db) + 6  # closer to each other than to float


def test_qwix_per_tensor_misses_the_folding_collapse(fragile):
  """Per tensor, deployment folds BatchNorm first, which spreads the fragile layer's channel
  ranges; qwix quantizes the unfolded kernel and reports the model as healthy."""
  model, calibration, batches = fragile
  reference = qwix_check.logits(model, batches)
  mine = sqnr_db(reference, ours(model, calibration, batches, per_channel=False))
  theirs = sqnr_db(reference, qwix_check.logits(
      qwix_check.fake_quant_per_tensor(model, [calibration]), batches))
  assert mine < 10 < 20 < theirs, (mine, theirs)
