import os

# With libtpu (the tpu extra) installed, JAX would probe for a TPU at start-up; tests run on
# the CPU and reach TPUs only through compile-only topologies, which work without it.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import numpy as np
import pytest


def rel_err(actual, expected) -> float:
  """max |actual - expected| / max |expected|: relative error on the array's own scale."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


@pytest.fixture
def rng():
  return np.random.default_rng(0)
