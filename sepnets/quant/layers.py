"""Quantized stand-ins for a model's layers, and the rules that choose how each is quantized.

`quantize_model(model, rules)` replaces, in place, every ConvNormAct, bare conv (the
squeeze-excite 1x1s) and Linear with a wrapper that owns the same parameter and statistics
variables and adds calibration state (a ConvNormAct's paths do not change; a bare conv or
linear moves one level down, to `.conv` / `.linear`). A wrapper has three
modes, set for the whole model with `set_mode`:

- 'float': exactly the original computation (conv, BatchNorm, activation);
- 'calibrate': the original computation, recording the range of the layer's input;
- 'quant': the deployed numerics: BatchNorm folded into the kernel with its running statistics,
  the folded weights and the input activation fake-quantized, bias in float (int32 on device).

What is quantized: the weights and the input activation of every conv and linear layer. The
residual additions, the squeeze-excite gating product and global pooling stay float (a full
integer kernel would requantize their outputs too; each of those outputs is quantized where it
enters the next conv).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sepnets.layers.conv import DepthwiseConv, PointwiseConv, _Conv2d
from sepnets.layers.norm_act import ConvNormAct, conv_norm_act
from sepnets.quant.fold import fold_batch_norm
from sepnets.quant.numerics import check_bits, fake_quant_act, fake_quant_weight

KINDS = ('depthwise', 'pointwise', 'standard', 'linear')
MODES = ('float', 'calibrate', 'quant')
HIST_BINS = 2048


class QuantStat(nnx.Variable):
  """Calibration state of one layer's input (not a parameter, not a BatchNorm statistic)."""


class QuantSetting(nnx.Variable):
  """How a layer is quantized, as state: a sweep or a one-layer-at-a-time sensitivity analysis
  changes it without recompiling. weight_bits / act_bits 0 = float."""


@dataclasses.dataclass(frozen=True)
class LayerQuant:
  """How one layer is quantized. None bits: that tensor stays float."""
  weight_bits: int | None = 8
  per_channel: bool = True
  act_bits: int | None = 8
  signed_act: bool = False  # int8 instead of uint8 activations (same values, shifted grid)

  def __post_init__(self):
    if self.weight_bits is not None:
      check_bits(self.weight_bits, 'weight_bits')
    if self.act_bits is not None:
      check_bits(self.act_bits, 'act_bits')

  @property
  def enabled(self) -> bool:
    return self.weight_bits is not None or self.act_bits is not None


FLOAT = LayerQuant(weight_bits=None, act_bits=None)


@dataclasses.dataclass(frozen=True)
class Rule:
  """Layers whose path matches `pattern` (fnmatch on dotted paths such as 'stages.1.0.conv_dw';
  '*' matches across dots) and, if given, whose kind is `kind` get `quant`."""
  pattern: str = '*'
  quant: LayerQuant = LayerQuant()
  kind: str | None = None

  def __post_init__(self):
    if self.kind is not None and self.kind not in KINDS:
      raise ValueError(f'unknown layer kind {self.kind!r} in quantization rule; expected one of '
                       f'{", ".join(KINDS)}')

  def matches(self, path: str, kind: str) -> bool:
    return fnmatch.fnmatchcase(path, self.pattern) and (self.kind is None or self.kind == kind)


def conv_kind(conv: nnx.Module) -> str:
  if isinstance(conv, DepthwiseConv):
    return 'depthwise'
  if isinstance(conv, PointwiseConv):
    return 'pointwise'
  if isinstance(conv, nnx.Linear):
    return 'linear'
  return 'standard'


class _QuantLayer(nnx.Module):
  """Shared state and input/weight quantization of the wrappers."""

  def _init_quant(self, path: str, kind: str, quant: LayerQuant):
    self.path, self.kind, self.mode = path, kind, 'float'
    self.weight_bits = QuantSetting(jnp.array(0, jnp.int32))
    self.per_channel = QuantSetting(jnp.array(False))
    self.act_bits = QuantSetting(jnp.array(0, jnp.int32))
    self.signed_act = QuantSetting(jnp.array(False))
    self.quant = quant
    self.index = 0  # position in forward order, set by quantize_model
    self.calib_pass = 1  # 1: min/max, 2: histogram over [amin, amax]
    self.amin = QuantStat(jnp.array(jnp.inf, jnp.float32))
    self.amax = QuantStat(jnp.array(-jnp.inf, jnp.float32))
    self.hist = QuantStat(jnp.zeros(HIST_BINS, jnp.float32))
    self.lo = QuantStat(jnp.array(0.0, jnp.float32))  # the chosen range
    self.hi = QuantStat(jnp.array(0.0, jnp.float32))

  @property
  def quant(self) -> LayerQuant:
    w, a = int(self.weight_bits[...]), int(self.act_bits[...])
    return LayerQuant(weight_bits=w or None, per_channel=bool(self.per_channel[...]),
                      act_bits=a or None, signed_act=bool(self.signed_act[...]))

  @quant.setter
  def quant(self, quant: LayerQuant) -> None:
    self.weight_bits[...] = jnp.array(quant.weight_bits or 0, jnp.int32)
    self.per_channel[...] = jnp.array(quant.per_channel)
    self.act_bits[...] = jnp.array(quant.act_bits or 0, jnp.int32)
    self.signed_act[...] = jnp.array(quant.signed_act)

  def _input(self, x: jax.Array) -> jax.Array:
    if self.mode == 'calibrate':
      xf = jax.lax.stop_gradient(x).astype(jnp.float32)
      if self.calib_pass == 1:
        self.amin[...] = jnp.minimum(self.amin[...], jnp.min(xf))
        self.amax[...] = jnp.maximum(self.amax[...], jnp.max(xf))
      else:
        lo, hi = self.amin[...], self.amax[...]
        width = jnp.where(hi > lo, hi - lo, 1.0)
        index = jnp.clip(((xf - lo) / width * HIST_BINS).astype(jnp.int32), 0, HIST_BINS - 1)
        self.hist[...] = self.hist[...] + jnp.bincount(index.ravel(), length=HIST_BINS)
    elif self.mode == 'quant':
      bits = self.act_bits[...]
      quantized = fake_quant_act(x, self.lo[...], self.hi[...], jnp.maximum(bits, 2),
                                 self.signed_act[...])
      x = jnp.where(bits > 0, quantized, x)
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self._forward(self._input(x))
    if _TRACE is not None:
      _TRACE.append((self, x, y))
    return y

  def _forward(self, x: jax.Array) -> jax.Array:
    raise NotImplementedError

  def _weight(self, w: jax.Array) -> jax.Array:
    bits = self.weight_bits[...]
    quantized = fake_quant_weight(w, jnp.maximum(bits, 2), self.per_channel[...])
    return jnp.where(bits > 0, quantized, w)


class QConvNormAct(_QuantLayer):
  """A ConvNormAct with quantization (same `conv`, `bn` and activation)."""

  def __init__(self, layer: ConvNormAct, path: str, quant: LayerQuant):
    self.conv, self.bn, self.act_name, self.act = layer.conv, layer.bn, layer.act_name, layer.act
    self._init_quant(path, conv_kind(layer.conv), quant)

  def folded(self) -> tuple[jax.Array, jax.Array]:
    """(kernel, bias) with BatchNorm folded in (running statistics)."""
    if self.bn is None:
      return _kernel_and_bias(self.conv)
    bias = self.conv.bias[...] if self.conv.bias is not None else None
    return fold_batch_norm(self.conv.kernel[...], bias, self.bn)

  def _forward(self, x: jax.Array) -> jax.Array:
    if self.mode == 'quant':
      kernel, bias = self.folded()
      return self.act(self.conv.conv_with(x, self._weight(kernel), bias))
    return conv_norm_act(self.conv, self.bn, self.act_name, x)  # exactly the float layer


def _kernel_and_bias(layer: nnx.Module) -> tuple[jax.Array, jax.Array]:
  """A layer without BatchNorm: its kernel and its bias (zeros when it has none)."""
  kernel = layer.kernel[...]
  bias = layer.bias[...] if layer.bias is not None else jnp.zeros(kernel.shape[-1], kernel.dtype)
  return kernel, bias


class QConv(_QuantLayer):
  """A bare conv with its bias (the squeeze-excite 1x1s)."""

  def __init__(self, conv: _Conv2d, path: str, quant: LayerQuant):
    self.conv = conv
    self._init_quant(path, conv_kind(conv), quant)

  def folded(self) -> tuple[jax.Array, jax.Array]:
    return _kernel_and_bias(self.conv)

  def _forward(self, x: jax.Array) -> jax.Array:
    if self.mode != 'quant':
      return self.conv(x)
    kernel, bias = self.folded()
    return self.conv.conv_with(x, self._weight(kernel), bias)


class QLinear(_QuantLayer):
  """An nnx.Linear (classifier, pre-logits)."""

  def __init__(self, linear: nnx.Linear, path: str, quant: LayerQuant):
    self.linear = linear
    self._init_quant(path, 'linear', quant)

  def folded(self) -> tuple[jax.Array, jax.Array]:
    return _kernel_and_bias(self.linear)

  def _forward(self, x: jax.Array) -> jax.Array:
    if self.mode != 'quant':
      return self.linear(x)
    kernel, bias = self.folded()
    x, kernel, bias = nnx.nn.dtypes.promote_dtype((x, self._weight(kernel), bias),
                                                  dtype=self.linear.dtype)
    return x @ kernel + bias


QUANT_LAYERS = (QConvNormAct, QConv, QLinear)


@nnx.jit
def forward(model: nnx.Module, images: jax.Array) -> jax.Array:
  """model(images), jitted: one compile per model structure and mode, shared by calibration,
  PTQ and the sensitivity analysis (calibration's state updates flow back into the model)."""
  return model(images)


def _dotted(path: Sequence[Any]) -> str:
  return '.'.join(str(p) for p in path)


def _candidates(model: nnx.Module) -> list[tuple[tuple, nnx.Module, str]]:
  """(path, module, kind) of every layer to wrap; convs inside a ConvNormAct are covered by
  it."""
  modules = [(path, module) for path, module in nnx.iter_modules(model) if path]
  blocks = [path for path, module in modules if isinstance(module, ConvNormAct)]
  found = []
  for path, module in modules:
    if isinstance(module, ConvNormAct):
      found.append((path, module, conv_kind(module.conv)))
    elif isinstance(module, (_Conv2d, nnx.Linear)) and not any(
        path[:len(b)] == b for b in blocks):
      found.append((path, module, conv_kind(module)))
  return found


_TRACE: list[tuple[_QuantLayer, Any, Any]] | None = None  # (layer, input, output) per call


def trace_calls(model: nnx.Module) -> list[tuple[_QuantLayer, Any, Any]]:
  """Every quantized layer call of one abstract forward pass (float mode), in order, with its
  input and output tracers: a layer whose input *is* another's output consumes it directly."""
  global _TRACE
  modes = {layer: layer.mode for _, layer in nnx.iter_modules(model)
           if isinstance(layer, QUANT_LAYERS)}
  _TRACE = []
  try:
    for layer in modes:
      layer.mode = 'float'
    shape = (1, 64, 64, getattr(model, 'in_chans', 3))
    jax.eval_shape(lambda x: model(x), jax.ShapeDtypeStruct(shape, jnp.float32))
    return _TRACE
  finally:
    _TRACE = None
    for layer, mode in modes.items():
      layer.mode = mode


def _forward_order(model: nnx.Module, wrappers: list[_QuantLayer]) -> list[_QuantLayer]:
  calls = [layer.path for layer, _, _ in trace_calls(model)]
  rank = {path: i for i, path in enumerate(calls)}
  ordered = sorted(wrappers, key=lambda w: rank.get(w.path, len(rank)))
  for i, wrapper in enumerate(ordered):
    wrapper.index = i
  return ordered


def layer_table(model: nnx.Module) -> list[tuple[str, str]]:
  """(dotted path, kind) of every quantizable layer, in forward order."""
  layers = quant_layers(model) or quantize_model(nnx.clone(model), [])
  return [(layer.path, layer.kind) for layer in layers]


def resolve(layers: Iterable[tuple[str, str]], rules: Sequence[Rule]) -> dict[str, LayerQuant]:
  """The LayerQuant of every layer: the last matching rule wins, unmatched layers stay float.
  A rule that matches no layer is an error (a typo must not silently quantize nothing)."""
  layers = list(layers)
  out = {path: FLOAT for path, _ in layers}
  for rule in rules:
    hits = [path for path, kind in layers if rule.matches(path, kind)]
    if not hits:
      sample = ', '.join(p for p, _ in layers[:6])
      raise ValueError(f'quantization rule {rule.pattern!r}'
                       f'{f" (kind {rule.kind})" if rule.kind else ""} matches no layer; '
                       f'layer paths look like: {sample}, ...')
    for path in hits:
      out[path] = rule.quant
  return out


def _set_child(parent: nnx.Module, key: Any, child: nnx.Module) -> None:
  if isinstance(key, int):
    parent[key] = child
  else:
    setattr(parent, key, child)


def _get(model: nnx.Module, path: Sequence[Any]) -> Any:
  node = model
  for key in path:
    node = node[key] if isinstance(key, int) else getattr(node, key)
  return node


def quantize_model(model: nnx.Module, rules: Sequence[Rule]) -> list[_QuantLayer]:
  """Wraps every conv / linear layer in place (see the module docstring); returns the wrappers
  in order. The model starts in 'float' mode. Calling it twice is an error."""
  if any(isinstance(m, QUANT_LAYERS) for _, m in nnx.iter_modules(model)):
    raise ValueError('model is already quantized')
  candidates = _candidates(model)
  wrappers = []
  for path, module, _ in candidates:
    name = _dotted(path)
    if isinstance(module, ConvNormAct):
      wrapper = QConvNormAct(module, name, FLOAT)
    elif isinstance(module, nnx.Linear):
      wrapper = QLinear(module, name, FLOAT)
    else:
      wrapper = QConv(module, name, FLOAT)
    _set_child(_get(model, path[:-1]), path[-1], wrapper)
    wrappers.append(wrapper)
  try:
    wrappers = _forward_order(model, wrappers)
    specs = resolve(((w.path, w.kind) for w in wrappers), rules)
  except Exception:
    for path, module, _ in candidates:  # leave the model as it was
      _set_child(_get(model, path[:-1]), path[-1], module)
    raise
  for wrapper in wrappers:
    wrapper.quant = specs[wrapper.path]
  return wrappers


def quant_layers(model: nnx.Module) -> list[_QuantLayer]:
  """The model's quantized layers in forward order ([] if it is not quantized)."""
  layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, QUANT_LAYERS)]
  return sorted(layers, key=lambda layer: layer.index)


def set_mode(model: nnx.Module, mode: str, *, calib_pass: int = 1) -> None:
  if mode not in MODES:
    raise ValueError(f'unknown quantization mode {mode!r}; expected one of {", ".join(MODES)}')
  layers = quant_layers(model)
  if not layers:
    raise ValueError('model has no quantized layers; call quantize_model first')
  for layer in layers:
    layer.mode, layer.calib_pass = mode, calib_pass
