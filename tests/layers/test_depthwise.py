"""Every depthwise strategy equals the grouped reference in value and both gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from sepnets.layers import DepthwiseConv, STRATEGIES, get_strategy
from sepnets.layers.helpers import lax_padding
from tests.conftest import rel_err

CASES = [  # (size, kernel, stride, padding, multiplier, dilation)
    (h, k, s, p, m, 1)
    for h, k, s, p, m in itertools.product((7, 8), (3, 5), (1, 2), ('same', 'symmetric'), (1,))
] + [
    (9, 3, 2, 'same', 2, 1), (8, 3, 1, 'symmetric', 3, 1), (10, 4, 2, 'same', 1, 1),
    (6, 2, 1, 'symmetric', 1, 1), (11, 3, 1, 'same', 1, 2), (12, 3, 2, 'symmetric', 2, 2),
    (7, 3, 1, 'valid', 1, 1), (13, 5, 1, 'same', 2, 2),
]
OTHERS = [name for name in STRATEGIES if name != 'grouped']


def _conv(strategy, x, w, stride, padding, dilation):
  k = (w.shape[0], w.shape[1])
  return get_strategy(strategy)(
      x, w, (stride, stride), lax_padding(padding, k, (dilation, dilation)),
      rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1])


def _value_and_grads(strategy, x, w, ct, stride, padding, dilation):
  def loss(x, w):
    y = _conv(strategy, x, w, stride, padding, dilation)
    return jnp.sum(y * ct), y
  (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)
  return y, grads


@pytest.mark.parametrize('strategy', OTHERS)
@pytest.mark.parametrize('size,kernel,stride,padding,multiplier,dilation', CASES)
def test_strategy_matches_grouped(strategy, size, kernel, stride, padding, multiplier,
                                  dilation, rng):
  c = 6
  x = jnp.asarray(rng.standard_normal((2, size, size + 1, c)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, c * multiplier)), jnp.float32)
  ref_y = _conv('grouped', x, w, stride, padding, dilation)
  ct = jnp.asarray(rng.standard_normal(ref_y.shape), jnp.float32)
  ref_y, (ref_dx, ref_dw) = _value_and_grads('grouped', x, w, ct, stride, padding, dilation)
  y, (dx, dw) = _value_and_grads(strategy, x, w, ct, stride, padding, dilation)
  assert y.shape == ref_y.shape
  assert rel_err(y, ref_y) <= 1e-5
  assert rel_err(dx, ref_dx) <= 1e-5
  assert rel_err(dw, ref_dw) <= 1e-5


def test_shift_differs_from_a_broken_reference(rng):
  """The comparison above can fail: a kernel flipped in space is caught."""
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 1, 4)), jnp.float32)
  y = _conv('shift', x, w, 1, 'same', 1)
  flipped = _conv('grouped', x, w[::-1, ::-1], 1, 'same', 1)
  assert rel_err(y, flipped) > 1e-2


def test_shift_bf16_accumulates_in_fp32(rng):
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 16)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((3, 3, 1, 16)), jnp.bfloat16)
  y = _conv('shift', x, w, 1, 'same', 1)
  ref = _conv('grouped', x.astype(jnp.float32), w.astype(jnp.float32), 1, 'same', 1)
  assert y.dtype == jnp.bfloat16
  assert rel_err(y, ref) <= 1e-2


def test_non_depthwise_call_falls_back_to_reference(rng):
  """A strategy handed a dense conv computes it (it is a drop-in for conv_general_dilated)."""
  x = jnp.asarray(rng.standard_normal((1, 6, 6, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
  args = (x, w, (1, 1), 'SAME')
  kw = dict(dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ref = lax.conv_general_dilated(*args, **kw)
  for name in OTHERS:
    assert rel_err(get_strategy(name)(*args, **kw), ref) <= 1e-6


def test_auto_lowers_to_native_on_cpu():
  """On CPU `auto` must compile to the native kernel's custom call, with no convolution op."""
  x = jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 1, 4), jnp.float32)
  hlo = jax.jit(lambda x, w: _conv('auto', x, w, 1, 'same', 1)).lower(x, w).compile().as_text()
  assert 'convolution' not in hlo and 'custom_call_target="sepnets_dw_conv"' in hlo
  hlo_ref = jax.jit(lambda x, w: _conv('grouped', x, w, 1, 'same', 1)).lower(x, w).compile().as_text()
  assert 'convolution' in hlo_ref


def test_native_unavailable_is_named_and_auto_falls_back(monkeypatch):
  """Without the native kernels `native` names why, and `auto` runs `shift` instead."""
  from sepnets import native as native_kernels
  from sepnets.layers import depthwise
  monkeypatch.setenv(native_kernels.ENV, '0')
  monkeypatch.setattr(depthwise, '_warned', [])
  x = jnp.ones((1, 8, 8, 4))
  w = jnp.ones((3, 3, 1, 4))
  with pytest.raises(native_kernels.NativeUnavailable, match='SEPNETS_NATIVE=0'):
    _conv('native', x, w, 1, 'same', 1)
  with pytest.warns(RuntimeWarning, match="auto runs 'shift' on CPU: native kernels are off"):
    assert depthwise.auto_choice('cpu') == 'shift'
  hlo = jax.jit(lambda x, w: _conv('auto', x, w, 1, 'same', 1)).lower(x, w).compile().as_text()
  assert 'sepnets_dw_conv' not in hlo and 'convolution' not in hlo


def test_parameter_tree_independent_of_strategy():
  trees = {}
  for name in STRATEGIES:
    layer = DepthwiseConv(8, 3, multiplier=2, stride=2, strategy=name, rngs=nnx.Rngs(0))
    trees[name] = nnx.state(layer, nnx.Param)
  ref = trees['grouped']
  for name, tree in trees.items():
    assert jax.tree.structure(tree) == jax.tree.structure(ref), name
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref)):
      np.testing.assert_array_equal(a, b)
  x = jnp.ones((2, 9, 9, 8))
  outs = {name: DepthwiseConv(8, 3, multiplier=2, stride=2, strategy=name, rngs=nnx.Rngs(0))(x)
          for name in STRATEGIES}
  for name, y in outs.items():
    assert rel_err(y, outs['grouped']) <= 1e-5, name


@pytest.mark.parametrize('width,stride,padding,kernel', [
    (24, 1, 'same', 3),    # 8 columns per partial sum
    (20, 1, 'same', 3),    # 5 (the largest divisor from 4 to 8)
    (17, 1, 'same', 3),    # no such divisor: zero-padded to 24
    (33, 2, ((1, 2), (0, 1)), 3),  # explicit asymmetric pads, 17 output columns
    (5, 1, 'valid', 3),    # narrower than a block
    (40, 1, 'same', 5),    # 5x5: blocks of 8 to 16 columns (10 here); input gradient by slices
    (35, 2, 'same', 5),    # 18 output columns -> 9 per block; input gradient gathered
])
def test_shift_gradients_across_column_blocks(width, stride, padding, kernel, rng):
  """`shift`'s own backward (gathered windows, column partial sums) equals the reference for
  every way the output width splits into blocks."""
  x = jnp.asarray(rng.standard_normal((2, 6, width, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, 5)), jnp.float32)
  conv = lambda name: lambda x, w: get_strategy(name)(
      x, w, (stride, stride), 'VALID' if padding == 'valid' else
      'SAME' if padding == 'same' else padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=5)
  ct = jnp.asarray(rng.standard_normal(conv('grouped')(x, w).shape), jnp.float32)
  grads = {name: jax.jit(jax.grad(lambda x, w: jnp.sum(conv(name)(x, w) * ct), (0, 1)))(x, w)
           for name in ('grouped', 'shift')}
  for got, ref in zip(grads['shift'], grads['grouped']):
    assert rel_err(got, ref) <= 1e-5


def test_shift_backward_does_not_materialize_the_windows():
  """XLA:CPU would give each of the K*K per-tap reductions its own copy of the window; the
  backward's scratch stays far below K*K times the input (it was 9x before the gather)."""
  x = jax.ShapeDtypeStruct((8, 32, 32, 32), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 1, 32), jnp.float32)
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(_conv('shift', x, w, 1, 'same', 1) ** 2), (0, 1)))
  temp = grad.lower(x, w).compile().memory_analysis().temp_size_in_bytes
  assert temp < 4 * 8 * 32 * 32 * 32 * 4, temp


# Channel blocks are a vector register wide (16 floats with AVX-512, 8 with AVX2): tails only,
# whole blocks, + a half block (24 and 40: AVX-512, 12: AVX2), + 5, two 64-channel tiles + 3.
# Widths 3 (column by column), 4 and 7 (one or two 4-column blocks reaching both edges); 5x5 at
# stride 2 also has its input gradient in register blocks, one column parity at a time. Padding
# as wide as the kernel leaves output rows and columns that read nothing but zeros. 3x3 at
# stride 1 on rows up to 16 wide computes two output rows at a time (11 high: the last alone;
# the padded ones: pairs that start above the input or end below it).
@pytest.mark.parametrize('channels', [6, 12, 16, 24, 37, 88, 131])
@pytest.mark.parametrize('width,kernel,stride,padding,dilation', [
    (21, 3, 1, 'same', 1), (21, 3, 2, 'same', 1), (22, 3, 2, 'symmetric', 1),
    (26, 5, 1, 'same', 1), (27, 5, 2, 'symmetric', 1), (20, 3, 1, 'valid', 1),
    (23, 3, 1, 'same', 2), (12, 3, 1, ((2, 0), (0, 3)), 1), (3, 3, 1, 'same', 1),
    (4, 5, 1, 'same', 1), (7, 3, 1, 'same', 1), (7, 3, 2, 'same', 1), (9, 5, 2, 'same', 1),
    (26, 5, 2, ((1, 2), (2, 1)), 1), (12, 3, 1, ((3, 3), (3, 3)), 1), (16, 3, 1, 'same', 1),
])
def test_native_register_blocks_match_grouped(channels, width, kernel, stride, padding,
                                              dilation, rng):
  """`native`'s register blocks (4 to 8 output columns: rows 4 to 26 wide cut into blocks of
  every width; register- and half-register-wide channel blocks; zeros past the input's edges),
  its column-by-column and tail paths, and both gradients, against the reference."""
  x = jnp.asarray(rng.standard_normal((2, 11, width, channels)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, channels)), jnp.float32)
  pad = padding if not isinstance(padding, str) else lax_padding(padding, (kernel, kernel),
                                                                 (dilation, dilation))
  conv = lambda name: lambda x, w: get_strategy(name)(
      x, w, (stride, stride), pad, rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=channels)
  ref = conv('grouped')(x, w)
  ct = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
  got = jax.jit(conv('native'))(x, w)
  assert rel_err(got, ref) <= 1e-5
  grads = {name: jax.jit(jax.grad(lambda x, w: jnp.sum(conv(name)(x, w) * ct), (0, 1)))(x, w)
           for name in ('grouped', 'native')}
  for got, ref in zip(grads['native'], grads['grouped']):
    assert rel_err(got, ref) <= 1e-5


# The tap gradient walks a whole image with each channel block's sums in registers where the
# image is small (at most 16 output rows, x and gradient within 512 KiB), else one row at a
# time; batch 3 over 32 row chunks puts chunk boundaries inside images either way. Output rows
# wider than 28 columns (without AVX-512: 14, and all at stride 2) go column by column, not in
# register blocks.
@pytest.mark.parametrize('height,width,channels', [(18, 9, 37), (12, 12, 600), (40, 6, 8),
                                                   (5, 61, 20)])
@pytest.mark.parametrize('kernel,stride', [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_native_tap_gradient_by_rows_and_by_images(height, width, channels, kernel, stride,
                                                    rng):
  grads = _tap_grads((3, height, width, channels), kernel, stride, rng)
  assert rel_err(grads['native'], grads['grouped']) <= 1e-5


def _tap_grads(shape, kernel, stride, rng):
  """The kernel gradient of a depthwise conv of an input of `shape` (random input, kernel and
  output gradient from `rng`), {strategy: gradient} for grouped and native."""
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, shape[-1])), jnp.float32)
  ct = jnp.asarray(rng.standard_normal(_conv('grouped', x, w, stride, 'same', 1).shape),
                   jnp.float32)
  return {name: jax.jit(jax.grad(
              lambda w: jnp.sum(_conv(name, x, w, stride, 'same', 1) * ct)))(w)
          for name in ('grouped', 'native')}


def test_native_tap_gradient_after_a_larger_one(rng):
  """The partial sums' buffer outlives a call (it is the calling thread's): a call after a
  larger one, in register blocks and column by column (output rows under 4 wide), sums only
  its own rows."""
  for shape, kernel, stride in [((2, 12, 12, 600), 5, 1), ((1, 7, 7, 24), 3, 2),
                                ((1, 5, 5, 16), 3, 2), ((2, 9, 9, 40), 3, 1)]:
    grads = _tap_grads(shape, kernel, stride, rng)
    assert rel_err(grads['native'], grads['grouped']) <= 1e-5, (shape, kernel, stride)


def _with_running_stats(layer, rng):
  """`layer` (a ConvNormAct) in eval mode, its BatchNorm's statistics and affine drawn from
  `rng` (not the identity a fresh one is)."""
  channels = layer.bn.mean.shape[0]
  layer.bn.mean[...] = jnp.asarray(rng.standard_normal(channels), jnp.float32)
  layer.bn.var[...] = jnp.asarray(rng.uniform(0.2, 3.0, channels), jnp.float32)
  layer.bn.scale[...] = jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32)
  layer.bn.bias[...] = jnp.asarray(rng.standard_normal(channels), jnp.float32)
  layer.eval()
  return layer


def _eval_block(strategy, act, channels, stride, rng):
  from sepnets.layers import ConvNormAct
  return _with_running_stats(ConvNormAct(channels, channels, 3, stride=stride, groups=channels,
                                         act=act, strategy=strategy, rngs=nnx.Rngs(0)), rng)


@pytest.mark.parametrize('act', ['relu', 'relu6', 'hard_swish', 'swish', 'gelu', None])
@pytest.mark.parametrize('channels,stride', [(24, 1), (37, 2)])
def test_eval_conv_norm_act_fuses_into_one_native_call(act, channels, stride, rng):
  """In eval mode a depthwise ConvNormAct with `native` (or `auto` on CPU) is one kernel
  call (BatchNorm folded, activation in the epilogue; gelu, not native, runs after it) and
  equals the unfused grouped reference, value and input gradient."""
  x = jnp.asarray(rng.standard_normal((2, 13, 21, channels)) * 3, jnp.float32)
  for strategy in ('native', 'auto'):
    block = _eval_block(strategy, act, channels, stride, np.random.default_rng(0))
    ref_block = _eval_block('grouped', act, channels, stride, np.random.default_rng(0))
    graph, state = nnx.split(block)
    fn = jax.jit(lambda s, x: nnx.merge(graph, s)(x))
    hlo = fn.lower(state, x).compile().as_text()
    assert hlo.count('custom_call_target="sepnets_dw_conv_bias_act"') == 1, strategy
    assert 'sepnets_dw_conv"' not in hlo
    assert rel_err(fn(state, x), ref_block(x)) <= 1e-5
    grad = lambda b: jax.grad(lambda x: jnp.sum(b(x) ** 2))(x)
    assert rel_err(grad(block), grad(ref_block)) <= 1e-5


def test_cost_model_still_sees_the_fused_batchnorm(rng):
  """`sepnets.trace` records the eval-mode BatchNorm as its own layer even where the compiled
  block fuses it into the conv."""
  from sepnets.trace import trace_layers
  block = _eval_block('auto', 'relu6', 16, 1, rng)
  calls = trace_layers(block, (1, 8, 8, 16))
  assert [c.path for c in calls] == ['conv', 'bn']


@pytest.mark.parametrize('act', ['relu', 'relu6', 'hard_swish', 'swish'])
def test_fused_epilogue_keeps_nan_and_inf_as_jax_does(act):
  """The native epilogue's activations treat NaN and +-inf as JAX's do (jnp.maximum/minimum,
  and swish's x * 1 / (1 + e^-x), NaN at -inf)."""
  from sepnets.layers.activations import get_act
  from sepnets.layers.depthwise import conv_affine_act
  x = jnp.zeros((1, 4, 12, 16), jnp.float32)
  kernel = jnp.zeros((3, 3, 1, 16), jnp.float32)
  bias = jnp.asarray([np.nan, np.inf, -np.inf, -1.0, 7.0, 2.0] + [0.5] * 10, jnp.float32)
  got = conv_affine_act('native', x, kernel, jnp.ones(16), bias, act, (1, 1), 'SAME', (1, 1))
  want = get_act(act)(jnp.broadcast_to(bias, got.shape))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)  # NaN where JAX has NaN, same infs
  if act != 'swish':
    np.testing.assert_array_equal(got, want)


def test_fused_swish_is_accurate_over_the_float_range():
  """The native epilogue's swish (its own e^x) against float64 x / (1 + e^-x) from -100 to
  100: within 1e-6 relative; 0 where 1 / (1 + e^-x) is a denormal (XLA's threads flush them
  to zero, as they do for jax.nn.silu), so within 1e-35 absolute there."""
  from sepnets.layers.depthwise import conv_affine_act
  c = 4096 + 8  # whole registers and a tail
  bias = np.concatenate([np.linspace(-100, 100, c - 8), [-88.5, -87.5, -1e-30, 0, 1e-30, 86.5,
                                                         88.5, 89.5]]).astype(np.float32)
  x = jnp.zeros((1, 1, 5, c), jnp.float32)
  got = conv_affine_act('native', x, jnp.zeros((3, 3, 1, c), jnp.float32), jnp.ones(c),
                        jnp.asarray(bias), 'swish', (1, 1), 'SAME', (1, 1))
  b = bias.astype(np.float64)
  with np.errstate(over='ignore'):
    want = b / (1 + np.exp(-b))
  for column in np.asarray(got)[0, 0]:
    np.testing.assert_allclose(column, want, rtol=1e-6, atol=1e-35)


@pytest.mark.parametrize('channels,width,kernel,stride,padding,dilation', [
    (20, 12, 3, 1, 'SAME', 1),           # a tail of 4 lanes (AVX-512) or a half block
    (72, 11, 3, 2, 'SAME', 1),           # odd width at stride 2
    (37, 9, 5, 2, ((2, 2), (2, 2)), 1),  # symmetric 5x5, a one-lane tail
    (24, 3, 3, 1, 'SAME', 1),            # rows narrower than a register block
    (33, 10, 3, 1, 'SAME', 2),           # dilated: a ring of 5 rows
])
@pytest.mark.parametrize('act_in,act', [('relu6', 'relu6'), ('hard_swish', None),
                                        ('swish', 'swish'), (None, 'relu'), ('gelu', 'relu')])
def test_native_prologue_matches_grouped(channels, width, kernel, stride, padding, dilation,
                                         act_in, act, rng):
  """`conv_affine_act(act_in=...)`: the native kernel applies the input's BatchNorm and
  activation row by row (zero padding after them) in the same call (gelu, not native, runs
  before it) and equals the unfused grouped reference, value and every gradient."""
  from sepnets.layers.depthwise import conv_affine_act
  x = jnp.asarray(rng.standard_normal((2, width + 1, width, channels)) * 3, jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, channels)), jnp.float32)
  per_channel = [jnp.asarray(rng.standard_normal(channels), jnp.float32) for _ in range(4)]

  def fn(strategy):
    def apply(x, w, scale, bias, in_scale, in_bias):
      return conv_affine_act(strategy, x, w, scale, bias, act, (stride, stride), padding,
                             (dilation, dilation), act_in=(in_scale, in_bias, act_in))
    return apply

  args = (x, w, *per_channel)
  hlo = jax.jit(fn('native')).lower(*args).compile().as_text()
  assert hlo.count('custom_call_target="sepnets_dw_act_conv_bias_act"') == (act_in != 'gelu')
  assert rel_err(jax.jit(fn('native'))(*args), fn('grouped')(*args)) <= 1e-5
  ct = jnp.asarray(rng.standard_normal(fn('grouped')(*args).shape), jnp.float32)
  grads = {name: jax.jit(jax.grad(lambda *a: jnp.sum(fn(name)(*a) * ct), tuple(range(6))))(*args)
           for name in ('grouped', 'native')}
  for got, ref in zip(grads['native'], grads['grouped']):
    assert rel_err(got, ref) <= 1e-5


def test_native_prologue_is_not_applied_to_the_padding():
  """Positions outside the input stay zero after the prologue: act(0 * s + b) would be 1 here."""
  from sepnets.layers.depthwise import conv_affine_act
  x = jnp.zeros((1, 5, 6, 16), jnp.float32)
  ones = jnp.ones(16, jnp.float32)
  got = conv_affine_act('native', x, jnp.ones((3, 3, 1, 16)), ones, 0 * ones, None, (1, 1),
                        'SAME', (1, 1), act_in=(ones, ones, 'relu'))
  counts = np.asarray([[2, 3, 3, 3, 3, 2]])  # valid rows x cols per output pixel, row 0
  np.testing.assert_array_equal(got[0, 0, :, 0], (counts * 2)[0])
  np.testing.assert_array_equal(got[0, 2, :, 0], (counts * 3)[0])


def _eval_layer(in_chs, out_chs, kernel, act, strategy, seed, **kw):
  from sepnets.layers import ConvNormAct
  layer = ConvNormAct(in_chs, out_chs, kernel, act=act, strategy=strategy, rngs=nnx.Rngs(seed),
                      **kw)
  return _with_running_stats(layer, np.random.default_rng(seed))


def _expand_then_depthwise(strategy, act, mid=40, stride=2):
  return (_eval_layer(12, mid, 1, act, strategy, 1),
          _eval_layer(mid, mid, 3, 'relu6', strategy, 2, stride=stride, groups=mid))


@pytest.mark.parametrize('act', ['relu6', 'hard_swish', 'relu', None])
def test_eval_expansion_norm_act_runs_in_the_depthwise_call(act, rng):
  """`conv_norm_act_pair` in eval mode: the 1x1 expansion is a plain dot and its BatchNorm and
  activation go into the depthwise call, which equals the two layers run one after the other
  with grouped convolutions, value and input gradient."""
  from sepnets.layers.norm_act import conv_norm_act_pair
  x = jnp.asarray(rng.standard_normal((2, 14, 10, 12)), jnp.float32)
  ref_first, ref_second = _expand_then_depthwise('grouped', act)
  for strategy in ('native', 'auto'):
    first, second = _expand_then_depthwise(strategy, act)
    graph, state = nnx.split((first, second))

    def fn(state, x):
      first, second = nnx.merge(graph, state)
      return conv_norm_act_pair(first, second, x)

    hlo = jax.jit(fn).lower(state, x).compile().as_text()
    assert hlo.count('custom_call_target="sepnets_dw_act_conv_bias_act"') == 1, strategy
    assert 'sepnets_dw_conv_bias_act"' not in hlo
    assert rel_err(jax.jit(fn)(state, x), ref_second(ref_first(x))) <= 1e-5
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) ** 2))(x)
    assert rel_err(grad(lambda x: fn(state, x)), grad(lambda x: ref_second(ref_first(x)))) <= 1e-5


def test_expansion_norm_stays_out_of_the_depthwise_call_where_it_cannot_go(rng):
  """Not fused: in training mode, with an activation the kernel lacks (gelu) or that costs
  more in it than it saves (swish, `norm_act.PAIR_ACTS`), or when either layer is not a plain
  ConvNormAct (a quantization wrapper)."""
  from sepnets.layers.norm_act import conv_norm_act_pair, fuses_eval_pair
  first, second = _expand_then_depthwise('auto', 'relu6')
  assert fuses_eval_pair(first, second)
  gelu_first, _ = _expand_then_depthwise('auto', 'gelu')
  assert not fuses_eval_pair(gelu_first, second)
  assert not fuses_eval_pair(_expand_then_depthwise('auto', 'swish')[0], second)

  class Wrapped(nnx.Module):
    def __init__(self, layer):
      self.layer = layer

    def __call__(self, x):
      return self.layer(x)

  assert not fuses_eval_pair(Wrapped(first), second)
  assert not fuses_eval_pair(first, Wrapped(second))
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 12)), jnp.float32)
  hlo = jax.jit(lambda x: conv_norm_act_pair(gelu_first, second, x)).lower(x).compile().as_text()
  assert 'sepnets_dw_act_conv_bias_act' not in hlo and 'sepnets_dw_conv_bias_act' in hlo
  first.train()
  second.train()
  assert not fuses_eval_pair(first, second)


@pytest.mark.parametrize('stride,act_in,kernel,size,channels', [
    (1, None, 3, 56, 64), (2, None, 3, 56, 64), (2, None, 5, 56, 64), (1, 'relu6', 3, 56, 64),
    (2, 'hard_swish', 3, 56, 64), (1, 'relu6', 3, 14, 64), (1, None, 3, 28, 72),
    (2, None, 3, 28, 72)])
def test_native_streamed_output_equals_the_cached_one(stride, act_in, kernel, size, channels,
                                                      rng):
  """A pass whose source and output fill more than half the last-level cache writes its output
  with non-temporal stores: the same numbers as the same images in two calls that fit (cached
  stores), plain (with the input gradient: at stride 1 a forward pass too, at stride 2 the
  transposed window, in register blocks, 3x3 and 5x5), with a BatchNorm epilogue
  and with a prologue; rows of 14 go in pairs; with AVX2, 64 channels are streamed a line at
  a time, 72 (not whole lines per pixel) a register at a time."""
  from sepnets.layers.depthwise import conv_affine_act
  from sepnets.native import stream_above_bytes
  out_size = (size - 1) // stride + 1
  per_image = (size * size + out_size * out_size) * channels * 4
  half = int(0.6 * stream_above_bytes()) // per_image + 1
  assert 2 * half * per_image > stream_above_bytes() >= half * per_image
  x = jnp.asarray(rng.standard_normal((2 * half, size, size, channels)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, channels)), jnp.float32)
  ct = jnp.asarray(rng.standard_normal((2 * half, out_size, out_size, channels)), jnp.float32)
  scale, bias, in_scale, in_bias = (jnp.asarray(rng.standard_normal(channels), jnp.float32)
                                    for _ in range(4))

  def native(x, ct):
    if act_in is None:
      y, vjp = jax.vjp(lambda x: _conv('native', x, w, stride, 'same', 1), x)
      return y, vjp(ct)[0]
    return conv_affine_act('native', x, w, scale, bias, 'relu', (stride, stride), 'SAME',
                           (1, 1), act_in=(in_scale, in_bias, act_in)), x

  fn = jax.jit(native)
  for whole, *halves in zip(fn(x, ct), fn(x[:half], ct[:half]), fn(x[half:], ct[half:])):
    np.testing.assert_array_equal(np.asarray(whole), np.concatenate(halves))
