"""Weight import from torchvision/timm: logits parity and strictness. Needs the `torch` extra."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import sepnets
from sepnets.convert import export_torch_state_dict, load_state_dict, load_torch_weights
from sepnets.convert.torch_refs import build_reference, randomize

PARITY = ['mobilenet_v1', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small',
          'efficientnet_b0', 'mobilenet_v4_conv_small']


def forward(model, x):
  graphdef, state = nnx.split(model)
  return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x))


def torch_forward(module, x):
  with torch.inference_mode():
    return module(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


@pytest.mark.parametrize('name', PARITY)
def test_logits_match_pytorch(name, rng):
  reference = randomize(build_reference(name))
  model = load_torch_weights(sepnets.create_model(name, rngs=nnx.Rngs(1)), reference)
  x = rng.standard_normal((2, 96, 96, 3)).astype(np.float32)
  want, got = torch_forward(reference, x), forward(model, x)
  assert np.abs(want).max() > 0.5  # logits of a meaningful scale
  assert np.abs(got - want).max() <= 1e-4


def test_files_and_a_wrong_mapping_is_visible(tmp_path, rng):
  from safetensors.torch import save_file
  reference = randomize(build_reference('mobilenet_v3_small'), seed=3)
  torch.save(reference.state_dict(), tmp_path / 'w.pth')
  save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / 'w.safetensors')
  x = rng.standard_normal((1, 64, 64, 3)).astype(np.float32)
  want = torch_forward(reference, x)
  for path in (tmp_path / 'w.pth', tmp_path / 'w.safetensors'):
    model = load_torch_weights(sepnets.create_model('mobilenet_v3_small', rngs=nnx.Rngs(0)), path,
                               reference='mobilenet_v3_small')
    assert np.abs(forward(model, x) - want).max() <= 1e-4
  model = load_torch_weights(sepnets.create_model('mobilenet_v3_small', rngs=nnx.Rngs(0)),
                             tmp_path / 'w.pth')  # a .pth keeps the layer order by itself
  assert np.abs(forward(model, x) - want).max() <= 1e-4
  with pytest.raises(ValueError, match='does not keep the layer order; pass reference='):
    load_torch_weights(model, tmp_path / 'w.safetensors')
  fresh = sepnets.create_model('mobilenet_v3_small', rngs=nnx.Rngs(0))
  assert np.abs(forward(fresh, x) - want).max() > 1e-2


def test_bad_sources(tmp_path):
  model = sepnets.create_model('mobilenet_v3_small', rngs=nnx.Rngs(0))
  with pytest.raises(FileNotFoundError, match='weights file not found: .*nope.pth'):
    load_torch_weights(model, tmp_path / 'nope.pth')
  corrupt = tmp_path / 'corrupt.pth'
  corrupt.write_bytes(b'not a checkpoint at all')
  with pytest.raises(ValueError, match='cannot read weights file .*corrupt.pth'):
    load_torch_weights(model, corrupt)


def test_strictness():
  state = build_reference('mobilenet_v3_small').state_dict()
  model = sepnets.create_model('mobilenet_v3_small', rngs=nnx.Rngs(0))
  extra = dict(state)
  extra['classifier.9.weight'] = torch.zeros(3, 1000)
  with pytest.raises(ValueError, match=r"unexpected keys in the state dict.*classifier\.9"):
    load_torch_weights(model, extra)
  missing = {k: v for k, v in state.items() if not k.startswith('classifier.3')}
  with pytest.raises(ValueError, match=r"missing keys: .*\['classifier'\]"):
    load_torch_weights(model, missing)
  odd = dict(state)
  odd['features.0.0.weight_v'] = torch.zeros(1)
  with pytest.raises(ValueError, match=r"unexpected keys in the state dict: \['features.0.0.weight_v'\]"):
    load_torch_weights(model, odd)
  with pytest.raises(ValueError, match=r"unexpected keys in the state dict: \['classifier.9.weight'\]"):
    load_torch_weights(model, extra, reference='mobilenet_v3_small')
  with pytest.raises(ValueError, match=r"missing keys in the state dict: \['classifier.3.weight'"):
    load_torch_weights(model, missing, reference='mobilenet_v3_small')
  ten = sepnets.create_model('mobilenet_v3_small', rngs=nnx.Rngs(0), num_classes=10)
  with pytest.raises(ValueError, match="sepnets 'classifier' .* does not match torch 'classifier.3'"):
    load_torch_weights(ten, state)
  other = build_reference('mobilenet_v2').state_dict()
  with pytest.raises(ValueError, match='does not match'):
    load_torch_weights(model, other)
  same = sepnets.create_model('mobilenet_v3_small', rngs=nnx.Rngs(0), padding='same')
  with pytest.raises(ValueError, match="PyTorch weights need padding='symmetric'"):
    load_torch_weights(same, state)


def test_load_state_dict_reads_modules_and_mappings():
  reference = build_reference('mobilenet_v3_small')
  from_module = load_state_dict(reference)
  from_mapping = load_state_dict(reference.state_dict())
  assert list(from_module) == list(from_mapping)
  assert all(isinstance(v, np.ndarray) for v in from_module.values())


@pytest.mark.parametrize('name', ['mobilenet_v3_large', 'mobilenet_v4_conv_small'])
def test_export_round_trip(name, rng):
  """sepnets weights -> torch state dict -> the torch model gives the sepnets logits."""
  model = sepnets.create_model(name, rngs=nnx.Rngs(5))
  reference = build_reference(name)
  exported = export_torch_state_dict(model, reference)
  assert list(exported) == list(reference.state_dict())
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()})
  x = rng.standard_normal((1, 64, 64, 3)).astype(np.float32)
  want = forward(model, x)
  assert np.abs(torch_forward(reference.eval(), x) - want).max() <= 1e-4 * max(1, np.abs(want).max())


def test_imported_weights_do_not_alias_the_torch_module(rng):
  """Training the torch module after the import must not change the sepnets model: a tensor's
  .numpy() shares its memory, and JAX on CPU can keep sharing it."""
  reference = randomize(build_reference('mobilenet_v3_small'))
  model = load_torch_weights(sepnets.create_model('mobilenet_v3_small', rngs=nnx.Rngs(1)),
                             reference)
  x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
  before = forward(model, x)
  with torch.no_grad():
    for tensor in [*reference.parameters(), *reference.buffers()]:
      if tensor.is_floating_point():
        tensor.add_(1.0)
  assert np.array_equal(forward(model, x), before)
