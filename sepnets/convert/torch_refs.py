"""Builds the PyTorch reference models (torchvision / timm) that sepnets models mirror.

Used by the weight-import tests and by tests/data/make_reference_counts.py. torchvision's
compiled extension does not load against a CPU-only torch of another build, but its model
definitions need none of it: the two operator-registration modules are skipped on import.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_SKIPPED = ('torchvision._meta_registrations', 'torchvision._autograd_registrations')


def _skip_operator_registration() -> None:
  if 'torchvision' not in sys.modules:
    for name in _SKIPPED:
      sys.modules.setdefault(name, types.ModuleType(name))


def _torchvision_models():
  _skip_operator_registration()
  return importlib.import_module('torchvision.models')


def _timm():
  _skip_operator_registration()  # timm imports torchvision
  return importlib.import_module('timm')


REFERENCES: dict[str, tuple[str, str]] = {
    'mobilenet_v1': ('timm', 'mobilenetv1_100'),
    'mobilenet_v2': ('torchvision', 'mobilenet_v2'),
    'mobilenet_v3_large': ('torchvision', 'mobilenet_v3_large'),
    'mobilenet_v3_small': ('torchvision', 'mobilenet_v3_small'),
    'mobilenet_v4_conv_small': ('timm', 'mobilenetv4_conv_small'),
    'mobilenet_v4_conv_medium': ('timm', 'mobilenetv4_conv_medium'),
    'mobilenet_v4_conv_large': ('timm', 'mobilenetv4_conv_large'),
    **{f'efficientnet_b{i}': ('torchvision', f'efficientnet_b{i}') for i in range(8)},
}
"""sepnets model name -> (library, reference model name)."""


def build_reference(name: str, *, num_classes: int = 1000, width: float | None = None) -> Any:
  """The PyTorch counterpart of sepnets model `name` with random weights, in eval mode."""
  library, ref_name = REFERENCES[name]
  if library == 'torchvision':
    tvm = _torchvision_models()
    kwargs: dict[str, Any] = {'weights': None, 'num_classes': num_classes}
    if width is not None and name == 'mobilenet_v2':
      kwargs['width_mult'] = width
    elif width is not None and name.startswith('mobilenet_v3'):
      from torchvision.models import mobilenetv3
      settings, last = mobilenetv3._mobilenet_v3_conf(name, width_mult=width)
      return mobilenetv3.MobileNetV3(settings, last, num_classes=num_classes).eval()
    elif width is not None:
      raise ValueError(f'{name} has no width option in {library}')
    return getattr(tvm, ref_name)(**kwargs).eval()
  timm = _timm()
  if width is None:
    return timm.create_model(ref_name, num_classes=num_classes).eval()
  if name != 'mobilenet_v1':
    raise ValueError(f'{name} has no width option in {library}')
  from timm.models.efficientnet import _gen_mobilenet_v1
  return _gen_mobilenet_v1(f'mobilenetv1_{int(width * 100):03d}', width,
                           num_classes=num_classes).eval()


def reference_key_order(name: str) -> list[str]:
  """State-dict keys of `name`'s torch counterpart in registration (= forward) order."""
  if name not in REFERENCES:
    raise ValueError(f'no PyTorch reference for {name!r}; known: {sorted(REFERENCES)}')
  return list(build_reference(name).state_dict())


def randomize(module: Any, seed: int = 0, image_size: int = 96) -> Any:
  """Gives a reference model non-trivial weights for parity checks, in eval mode.

  BatchNorm scales, biases and running statistics are drawn at random (PyTorch's init
  leaves them at 1, 0, 0, 1), linear layers get std 1/sqrt(fan_in), and the classifier is
  rescaled so that the largest |logit| on a random batch is 4: a wrong mapping cannot hide,
  and an absolute fp32 tolerance of 1e-4 is meaningful.
  """
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
      elif isinstance(m, torch.nn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    module.eval()
    scale = module(torch.randn((2, 3, image_size, image_size), generator=g)).abs().max() / 4
    classifier = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    classifier.weight /= scale
    classifier.bias /= scale
  return module
