"""Google's qwix as an optional cross-check of sepnets.quant, and the evaluation that led to
writing our own (`pip install -e '.[quant]'` installs the pinned qwix).

`findings()` re-measures, on tiny models, the qwix behaviours that rule it out as the
implementation here; `tests/quant/test_qwix.py` asserts each, so a qwix release that changes
one fails the test and prompts a re-evaluation. Where qwix works (forward passes, PTQ of the
unfolded model), `ptq_per_channel` and `fake_quant_per_tensor` run it on a sepnets model, so
an independent implementation checks our numbers (`benchmarks/qwix_check.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sepnets.layers.conv import DepthwiseConv, _Conv2d

QWIX_VERSION = '0.1.8'  # the version evaluated; pinned by the `quant` extra


def _qwix():
  try:
    import qwix
  except ImportError as e:  # an optional dependency: say how to get it
    raise ImportError("the qwix cross-check needs qwix: pip install -e '.[quant]' "
                      f'(qwix=={QWIX_VERSION})') from e
  return qwix


def _plain_convs(model: nnx.Module) -> nnx.Module:
  """A copy of `model` whose convs all call jax.lax.conv_general_dilated, the op qwix
  intercepts (on CPU the `shift`, `native` and `auto` depthwise strategies and the `auto`
  pointwise implementation never call it, so qwix would leave those layers float), and whose
  depthwise layers are 'grouped', so no BatchNorm is fused into them in eval mode."""
  model = nnx.clone(model)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, _Conv2d):
      node.conv_general_dilated = jax.lax.conv_general_dilated
    if isinstance(node, DepthwiseConv):
      node.strategy = 'grouped'
  return model


def _rule(qwix, cls, **kwargs):
  # int8 weights (symmetric, absmax) and int8 inputs (asymmetric, min/max), static input ranges
  return cls(module_path='.*', weight_qtype=jnp.int8, act_qtype=jnp.int8, act_static_scale=True,
             act_calibration_method='minmax', **kwargs)


def ptq_per_channel(model: nnx.Module, calibration: jax.Array) -> nnx.Module:
  """qwix PTQ of a copy of `model` (eval mode): int8 weights per output channel (qwix's only
  granularity for convs), int8 inputs with static ranges from `calibration`, the one batch qwix
  traces with: each range is the mean over the batch of the per-example min/max (ours: the
  min/max over all calibration data). BatchNorm stays a float op after the conv."""
  qwix = _qwix()
  provider = qwix.PtqProvider([_rule(qwix, qwix.QuantizationRule)])
  return qwix.quantize_model(_plain_convs(model), provider, jnp.asarray(calibration))


def fake_quant_per_tensor(model: nnx.Module, calibration: Sequence[jax.Array]) -> nnx.Module:
  """qwix's fake-quantized (QAT) forward on a copy of `model`, per-tensor weights: calibrated
  eagerly over `calibration` (its statistics cannot update under jit), then frozen. Forward
  only: its backward fails on depthwise convs (see `findings`)."""
  qwix = _qwix()
  rule = _rule(qwix, qwix.QtRule, disable_channelwise_axes=True)
  quantized = qwix.quantize_model(_plain_convs(model), qwix.QtProvider([rule]),
                                  jnp.asarray(calibration[0]))
  for batch in calibration:
    quantized(jnp.asarray(batch))
  quantized.set_attributes(disable_quant_stats_update=True, raise_if_not_found=False)
  return quantized


class _DepthwiseBlock(nnx.Module):
  """depthwise 3x3 -> BatchNorm -> ReLU -> pointwise: the smallest separable block."""

  def __init__(self, channels: int = 8):
    rngs = nnx.Rngs(0)
    self.dw = nnx.Conv(channels, channels, (3, 3), feature_group_count=channels,
                       use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(channels, use_running_average=True, rngs=rngs)
    self.pw = nnx.Conv(channels, 4, (1, 1), rngs=rngs)

  def __call__(self, x):
    return self.pw(jax.nn.relu(self.bn(self.dw(x))))


def _error(fn: Callable[[], Any]) -> str | None:
  try:
    fn()
  except Exception as e:  # noqa: BLE001 - recording what qwix raises is the point
    return f'{type(e).__name__}: {str(e).splitlines()[0]}'
  return None


def findings() -> dict[str, dict[str, Any]]:
  """Each qwix behaviour that matters here, measured: {name: {'holds': bool, 'detail': str}}."""
  qwix = _qwix()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  out: dict[str, dict[str, Any]] = {}

  # 1. The int8 grid: scale absmax / 127.5, values clipped to [-128, 127] (TFLite: /127, +-127).
  w = jnp.linspace(-1.0, 1.0, 255)
  q = qwix.quantize(w, jnp.int8, channelwise_axes=[])
  scale = float(np.asarray(q.scale).ravel()[0])
  out['int8 grid is absmax/127.5 (TFLite: absmax/127)'] = {
      'holds': bool(np.isclose(scale * 127.5, 1.0, rtol=1e-6)),
      'detail': f'absmax 1.0 -> scale 1/{1 / scale:.2f}: the largest weight dequantizes to '
                f'{127 * scale:.4f} (clipped); integers {int(np.min(q.qvalue))}..'
                f'{int(np.max(q.qvalue))}'}

  # 2. QAT backward through a depthwise (grouped) conv.
  model = _DepthwiseBlock()
  qat = qwix.quantize_model(nnx.clone(model), qwix.QtProvider(
      [qwix.QtRule(module_path='.*', weight_qtype=jnp.int8)]), x)
  error = _error(lambda: nnx.grad(lambda m: jnp.sum(m(x) ** 2))(qat))
  out['QAT backward fails on depthwise convs'] = {
      'holds': error is not None and 'feature_group_count' in error,
      'detail': error or 'the gradient computed'}

  # 3. BatchNorm is not folded: PTQ quantizes the raw conv kernel and keeps BN as a float op.
  ptq = ptq_per_channel(model, x)
  state = nnx.state(ptq)
  bn_float = all(isinstance(v, jax.Array) and v.dtype == jnp.float32
                 for v in jax.tree.leaves(state['bn']))
  kernel = state['dw']['kernel']['array']
  raw = model.dw.kernel[...]
  dequant = np.asarray(kernel['qvalue'][...], np.float32) * np.asarray(kernel['scale'][...])
  out['BatchNorm is not folded before quantization'] = {
      'holds': bool(bn_float and np.abs(dequant - raw).max() <= np.abs(raw).max() / 127),
      'detail': 'PTQ keeps bn.{scale,bias,mean,var} as float and quantizes the unfolded '
                f'depthwise kernel (max dequantization error {np.abs(dequant - raw).max():.2e})'}

  # 4. Calibration (static activation ranges collected by the QAT provider) under nnx.jit.
  calib = qwix.quantize_model(nnx.clone(model), qwix.QtProvider(
      [_rule(qwix, qwix.QtRule)]), x)
  eager = _error(lambda: calib(x))
  jitted = _error(lambda: nnx.jit(lambda m, v: m(v))(calib, x))
  out['calibration fails under nnx.jit (works eagerly)'] = {
      'holds': eager is None and jitted is not None,
      'detail': jitted or 'jitted calibration ran'}

  # 5. PTQ has no per-tensor option for convs: the weight scale is per output channel.
  out['PTQ conv weights are always per output channel'] = {
      'holds': tuple(kernel['scale'][...].shape) == (1, 1, 1, 8),
      'detail': f"depthwise kernel {tuple(raw.shape)} -> scale {tuple(kernel['scale'][...].shape)}"
                '; per-tensor exists only in the QAT provider (disable_channelwise_axes)'}
  return out


def logits(model: nnx.Module, batches: Sequence[jax.Array], *, jit: bool = True) -> np.ndarray:
  """`model`'s outputs over `batches`, concatenated (jit=False for a model that still records
  statistics)."""
  fn = nnx.jit(lambda m, x: m(x)) if jit else (lambda m, x: m(x))
  return np.concatenate([np.asarray(fn(model, jnp.asarray(b))) for b in batches])
