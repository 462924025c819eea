"""Strict import of torchvision / timm weights into a sepnets model.

A PyTorch state dict lists each layer's tensors in registration order, which for the
reference models is forward order; sepnets' layers are taken in call order by tracing the
model. The two sequences are matched one to one, and every pair must agree in kind (conv,
linear, batchnorm), shape and bias: any leftover on either side, or any disagreement, raises
naming the layers, so nothing is loaded silently wrong.

Layouts: conv OIHW -> HWIO, linear (out, in) -> (in, out); a 1x1 conv loads into a linear
layer (MobileNetV4's conv_head acts on pooled features). BatchNorm weight/bias/running stats
-> scale/bias/mean/var.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from sepnets.trace import LayerCall, modules_by_path, trace_layers

_BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var')
_IGNORED = ('num_batches_tracked',)


@dataclasses.dataclass(frozen=True)
class TorchLayer:
  prefix: str
  kind: str  # conv | linear | batchnorm
  tensors: dict[str, np.ndarray]

  def describe(self) -> str:
    return f"torch '{self.prefix}' ({self.kind} {tuple(self.tensors['weight'].shape) if 'weight' in self.tensors else ''})"


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):
    value = value.detach().cpu()
    if str(value.dtype) == 'torch.bfloat16':
      value = value.float()
    # a copy: .numpy() shares the tensor's memory, and JAX on CPU may keep sharing it, so
    # a later in-place update of the torch module would change the imported weights
    return value.numpy().copy()
  return np.array(value)


def load_state_dict(source: Any) -> dict[str, np.ndarray]:
  """A state dict as numpy arrays from a torch module, a mapping, or a .pth/.pt/.safetensors file."""
  if hasattr(source, 'state_dict') and callable(source.state_dict):
    return {k: _to_numpy(v) for k, v in source.state_dict().items()}
  if isinstance(source, Mapping):
    return {k: _to_numpy(v) for k, v in source.items()}
  if not isinstance(source, (str, os.PathLike)):
    raise TypeError(f'expected a torch module, a state dict or a file path, got {type(source).__name__}')
  path = Path(source)
  if not path.is_file():
    raise FileNotFoundError(f'weights file not found: {path}')
  try:
    if path.suffix == '.safetensors':
      from safetensors.torch import load_file
      state = load_file(str(path))
    else:
      import torch
      state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as err:  # torch and safetensors raise many kinds for a bad file
    raise ValueError(f'cannot read weights file {path}: {type(err).__name__}: {err}') from err
  if isinstance(state, Mapping) and 'state_dict' in state and isinstance(state['state_dict'], Mapping):
    state = state['state_dict']
  if not isinstance(state, Mapping):
    raise ValueError(f'weights file {path} holds a {type(state).__name__}, not a state dict')
  return {k: _to_numpy(v) for k, v in state.items()}


def torch_layers(state: Mapping[str, np.ndarray]) -> list[TorchLayer]:
  """Groups a state dict's tensors by layer, in order, and classifies each layer."""
  groups: dict[str, dict[str, np.ndarray]] = {}
  for key, value in state.items():
    prefix, _, name = key.rpartition('.')
    if name in _IGNORED:
      continue
    groups.setdefault(prefix, {})[name] = value
  layers = []
  for prefix, tensors in groups.items():
    names = set(tensors)
    if 'running_mean' in names:
      kind, allowed = 'batchnorm', set(_BN_KEYS)
    elif 'weight' in names and tensors['weight'].ndim == 4:
      kind, allowed = 'conv', {'weight', 'bias'}
    elif 'weight' in names and tensors['weight'].ndim == 2:
      kind, allowed = 'linear', {'weight', 'bias'}
    else:
      raise ValueError(f"unexpected keys in the state dict: {sorted(f'{prefix}.{n}' for n in names)}")
    if names - allowed:
      raise ValueError(f"unexpected keys in the state dict: {sorted(f'{prefix}.{n}' for n in names - allowed)}")
    layers.append(TorchLayer(prefix, kind, tensors))
  return layers


def _describe(call: LayerCall) -> str:
  layer = call.layer
  if isinstance(layer, nnx.BatchNorm):
    return f"sepnets '{call.path}' (batchnorm {layer.num_features})"
  kind = 'conv' if isinstance(layer, nnx.Conv) else 'linear'
  return f"sepnets '{call.path}' ({kind} {tuple(layer.kernel.shape)})"


def _converted(call: LayerCall, torch_layer: TorchLayer) -> dict[str, np.ndarray]:
  """The sepnets parameter values for one matched pair; raises if they do not fit."""
  layer, t = call.layer, torch_layer.tensors
  mismatch = ValueError(f'{_describe(call)} does not match {torch_layer.describe()}')
  if isinstance(layer, nnx.BatchNorm):
    if torch_layer.kind != 'batchnorm' or t['weight'].shape != (layer.num_features,):
      raise mismatch
    return {'scale': t['weight'], 'bias': t['bias'], 'mean': t['running_mean'], 'var': t['running_var']}
  if torch_layer.kind == 'batchnorm':
    raise mismatch
  weight = t['weight']
  if isinstance(layer, nnx.Conv):
    if torch_layer.kind != 'conv':
      raise mismatch
    kernel = weight.transpose(2, 3, 1, 0)
  elif torch_layer.kind == 'linear' or weight.shape[2:] == (1, 1):
    kernel = weight.reshape(weight.shape[:2]).T
  else:
    raise mismatch
  if kernel.shape != tuple(layer.kernel.shape) or ('bias' in t) != layer.use_bias:
    raise mismatch
  return {'kernel': kernel, **({'bias': t['bias']} if layer.use_bias else {})}


def in_key_order(state: Mapping[str, np.ndarray], key_order: Sequence[str]) -> dict[str, np.ndarray]:
  """`state` reordered to `key_order`; keys on one side only raise, by name."""
  wanted = [k for k in key_order if k.rpartition('.')[2] not in _IGNORED]
  have = {k for k in state if k.rpartition('.')[2] not in _IGNORED}
  unexpected = sorted(have - set(wanted))
  if unexpected:
    raise ValueError(f'unexpected keys in the state dict: {unexpected}')
  missing = [k for k in wanted if k not in have]
  if missing:
    raise ValueError(f'missing keys in the state dict: {missing}')
  return {k: state[k] for k in wanted}


def match_layers(model: nnx.Module, state: Mapping[str, np.ndarray], *,
                 image_size: int = 64) -> list[tuple[LayerCall, TorchLayer, dict[str, np.ndarray]]]:
  """Pairs the model's layers (call order) with the state dict's (stored order), strictly.

  Returns (sepnets layer call, torch layer, sepnets values for it) per pair; raises on any
  leftover, kind, shape or bias mismatch, or a padding other than 'symmetric'.
  """
  in_chans = getattr(model, 'in_chans', None)
  if in_chans is None:
    raise TypeError('expected a sepnets model (create_model)')
  calls = trace_layers(model, (1, image_size, image_size, in_chans))
  for call in calls:
    if isinstance(call.layer, nnx.Conv) and max(call.layer.kernel_size) > 1 and \
        getattr(call.layer, 'padding_mode', 'symmetric') != 'symmetric':
      raise ValueError(f"PyTorch weights need padding='symmetric'; '{call.path}' uses "
                       f"{call.layer.padding_mode!r} (create_model(..., padding='symmetric'))")
  layers = torch_layers(state)
  pairs = [(call, layer, _converted(call, layer)) for call, layer in zip(calls, layers)]
  if len(layers) > len(calls):
    extra = [f'{l.prefix}.*' for l in layers[len(calls):]]
    raise ValueError(f'unexpected keys in the state dict (no sepnets layer left for them): {extra}')
  if len(calls) > len(layers):
    missing = [c.path for c in calls[len(layers):]]
    raise ValueError(f'missing keys: the state dict has no weights for sepnets layers {missing}')
  return pairs


def _ordered_state(source: Any, reference: str | None) -> dict[str, np.ndarray]:
  state = load_state_dict(source)
  if reference is not None:
    from sepnets.convert.torch_refs import reference_key_order
    return in_key_order(state, reference_key_order(reference))
  if isinstance(source, (str, os.PathLike)) and Path(source).suffix == '.safetensors':
    raise ValueError('a .safetensors file does not keep the layer order; pass reference= '
                     '(the sepnets model name, e.g. reference="mobilenet_v2")')
  return state


def load_torch_weights(model: nnx.Module, source: Any, *, reference: str | None = None,
                       image_size: int = 64) -> nnx.Module:
  """Loads torchvision/timm weights into `model` in place, strictly; returns the model.

  Args:
    model: a sepnets model built with padding='symmetric' (PyTorch's padding).
    source: a torch module, a state dict, or a .pth/.pt/.safetensors file.
    reference: the sepnets model name whose torch counterpart gives the key order
      (`torch_refs.REFERENCES`). Needed for .safetensors files, which store keys sorted by
      name rather than in layer order; when given, key names are checked against it too.
    image_size: the size used to trace the model's layer order (any valid size works).
  """
  pairs = match_layers(model, _ordered_state(source, reference), image_size=image_size)
  modules = modules_by_path(model)
  for call, _, values in pairs:
    layer = modules[call.path]
    for name, value in values.items():
      variable = getattr(layer, name)
      # device_put: jnp.asarray of a NumPy array compiles a copy per shape (jax 0.10)
      variable[...] = jax.device_put(np.asarray(value, variable[...].dtype))
  return model


def export_torch_state_dict(model: nnx.Module, template: Any, *,
                            image_size: int = 64) -> dict[str, np.ndarray]:
  """The model's weights as a PyTorch state dict with `template`'s keys (writable numpy arrays).

  Args:
    template: the torch counterpart (module or state dict) whose key names and layouts the
      result takes; it is matched as strictly as in load_torch_weights.
  Load it with `module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`.
  """
  state = load_state_dict(template)
  pairs = match_layers(model, state, image_size=image_size)
  modules = modules_by_path(model)
  out: dict[str, np.ndarray] = {}
  for call, torch_layer, _ in pairs:
    layer = modules[call.path]
    prefix = torch_layer.prefix + '.' if torch_layer.prefix else ''
    if isinstance(layer, nnx.BatchNorm):
      for ours, theirs in zip(('scale', 'bias', 'mean', 'var'), _BN_KEYS):
        out[prefix + theirs] = np.array(getattr(layer, ours)[...], np.float32)
    else:
      kernel = np.array(layer.kernel[...], np.float32)
      like = torch_layer.tensors['weight']
      if isinstance(layer, nnx.Conv):
        out[prefix + 'weight'] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
      else:
        out[prefix + 'weight'] = np.ascontiguousarray(kernel.T).reshape(like.shape)
      if layer.use_bias:
        out[prefix + 'bias'] = np.array(layer.bias[...], np.float32)
  for key, value in state.items():  # bookkeeping buffers (num_batches_tracked) as they were
    if key.rpartition('.')[2] in _IGNORED:
      out[key] = value
  return {key: out[key] for key in state}
