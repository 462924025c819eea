"""The zoo against its PyTorch references, computed live from torchvision / timm.

Run:  python benchmarks/zoo_parity.py [--out results/zoo_parity.md]   (needs the torch extra)

For every model at its default resolution (and the width variants): trainable parameters,
BatchNorm statistics and MACs (conv + linear, every tap) of sepnets next to the reference's;
then, for the models with weight import, the max |logit difference| after loading the
reference's (randomized) weights, on a random 2x224x224 batch, fp32.
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sepnets  # noqa: E402
from sepnets.convert import load_torch_weights  # noqa: E402
from sepnets.convert.torch_refs import REFERENCES, build_reference, randomize  # noqa: E402
from sepnets.files import atomic_write_text  # noqa: E402
from sepnets.summary import model_layer_costs  # noqa: E402
from sepnets import costs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests' / 'data'))
from make_reference_counts import VARIANTS, count  # noqa: E402

IMPORT = ['mobilenet_v1', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small',
          'efficientnet_b0', 'mobilenet_v4_conv_small']


def count_rows():
  rows = []
  for name, width, size in VARIANTS:
    overrides = {} if width in (None, 1.0) else {'width': width}
    ours = costs.totals(model_layer_costs(name, image_size=size, **overrides)[0])
    ref = count(build_reference(name, width=overrides.get('width')), size)
    rows.append((name, width or 1.0, size, REFERENCES[name], ours, ref))
  return rows


def import_rows(size: int = 224):
  rows = []
  for name in IMPORT:
    reference = randomize(build_reference(name), image_size=size)
    model = load_torch_weights(sepnets.create_model(name, rngs=nnx.Rngs(0)), reference)
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    with torch.inference_mode():
      want = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    graphdef, state = nnx.split(model)
    got = np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x))
    rows.append((name, REFERENCES[name], float(np.abs(got - want).max()), float(np.abs(want).max())))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', help='also write the Markdown to this file')
  args = parser.parse_args()
  start = time.time()
  lines = ['| model | width | image | params (ours / ref) | BN stats (ours / ref) | MACs (ours / ref) | exact |',
           '|---|---|---|---|---|---|---|']
  for name, width, size, (lib, ref_name), ours, ref in count_rows():
    exact = (ours.params, ours.stats, ours.macs) == (ref['params'], ref['stats'], ref['macs'])
    lines.append(f"| {name} | {width} | {size} | {ours.params:,} / {ref['params']:,} | "
                 f"{ours.stats:,} / {ref['stats']:,} | {ours.macs:,} / {ref['macs']:,} | "
                 f"{'yes' if exact else 'NO'} ({lib}:{ref_name}) |")
  lines += ['', '| model | source | max abs logit difference | max abs logit |', '|---|---|---|---|']
  for name, (lib, ref_name), diff, scale in import_rows():
    lines.append(f'| {name} | {lib}:{ref_name} | {diff:.2e} | {scale:.2f} |')
  versions = f'torch {torch.__version__}, jax {jax.__version__}'
  lines += ['', f'Produced by `python benchmarks/zoo_parity.py` ({versions}) in {time.time() - start:.0f} s.']
  text = '\n'.join(lines)
  print(text)
  if args.out:
    atomic_write_text(args.out, text + '\n')


if __name__ == '__main__':
  main()
