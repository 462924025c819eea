"""Writes reference_counts.json: parameters and MACs of the torchvision/timm counterparts.

Run:  python tests/data/make_reference_counts.py   (needs torch==2.13.0, torchvision, timm)

Counts: trainable parameters at 1000 classes; BatchNorm running statistics (running mean
and var) separately; MACs of conv and linear layers over every tap at the given resolution.
"""

import json
import sys
from importlib import metadata
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from sepnets.convert.torch_refs import REFERENCES, build_reference  # noqa: E402

VARIANTS = [  # (sepnets name, width or None, image size)
    ('mobilenet_v1', None, 224), ('mobilenet_v1', 0.25, 224), ('mobilenet_v1', 0.5, 224),
    ('mobilenet_v1', 0.75, 224), ('mobilenet_v1', 1.25, 224), ('mobilenet_v1', 1.0, 160),
    ('mobilenet_v2', None, 224), ('mobilenet_v2', 0.35, 224), ('mobilenet_v2', 0.5, 224),
    ('mobilenet_v2', 0.75, 224), ('mobilenet_v2', 1.4, 224), ('mobilenet_v2', 1.0, 96),
    ('mobilenet_v3_large', None, 224), ('mobilenet_v3_large', 0.75, 224),
    ('mobilenet_v3_small', None, 224), ('mobilenet_v3_small', 0.75, 224),
    ('mobilenet_v4_conv_small', None, 224), ('mobilenet_v4_conv_medium', None, 256),
    ('mobilenet_v4_conv_large', None, 384),
    ('efficientnet_b0', None, 224), ('efficientnet_b1', None, 240),
    ('efficientnet_b2', None, 260), ('efficientnet_b3', None, 300),
    ('efficientnet_b4', None, 380), ('efficientnet_b5', None, 456),
    ('efficientnet_b6', None, 528), ('efficientnet_b7', None, 600),
]


def count(model: torch.nn.Module, image_size: int) -> dict:
  macs = [0]

  def hook(module, inputs, output):
    if isinstance(module, torch.nn.Conv2d):
      kh, kw = module.kernel_size
      macs[0] += output.numel() * kh * kw * module.in_channels // module.groups
    elif isinstance(module, torch.nn.Linear):
      macs[0] += output.numel() * module.in_features

  handles = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  with torch.inference_mode():
    model(torch.zeros(1, 3, image_size, image_size))
  for h in handles:
    h.remove()
  stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(('running_mean', 'running_var')))
  return {'params': sum(p.numel() for p in model.parameters() if p.requires_grad),
          'stats': stats, 'macs': macs[0]}


def main() -> None:
  rows = []
  for name, width, size in VARIANTS:
    model = build_reference(name, width=width if width not in (None, 1.0) else None)
    library, ref = REFERENCES[name]
    rows.append({'model': name, 'width': width, 'image_size': size, 'reference': f'{library}:{ref}',
                 **count(model, size)})
    print(rows[-1], flush=True)
  versions = {k: metadata.version(k) for k in ('torch', 'torchvision', 'timm')}
  out = Path(__file__).with_name('reference_counts.json')
  out.write_text(json.dumps({'versions': versions, 'script': 'tests/data/make_reference_counts.py',
                             'rows': rows}, indent=1) + '\n')


if __name__ == '__main__':
  main()
