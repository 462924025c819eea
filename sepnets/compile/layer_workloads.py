"""Single-layer workloads for the bench: the worked example and a model's distinct shapes.

`worked_example()`: standard, depthwise, pointwise and separable at K=3, C_in=C_out=256 on
56x56 ('same' padding). `model_shapes('mobilenet_v2')`: every distinct depthwise and pointwise
layer shape of a zoo model (at its default resolution, the model's padding). Each becomes an
eval-mode forward workload compiled for every target like a model.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sepnets import costs
from sepnets.compile.lowering import Workload
from sepnets.layers import DepthwiseConv, PointwiseConv, SeparableConv, StandardConv
from sepnets.registry import get_model_def
from sepnets.summary import model_layer_costs
from sepnets.trace import tag_layer_scopes
from sepnets.train.steps import make_eval_step

DEPTHWISE_LAYERS = ('depthwise', 'separable')


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  layer: str  # standard | depthwise | pointwise | separable
  in_chs: int
  out_chs: int
  kernel: int
  stride: int
  size: int  # input height = width
  padding: str
  source: str  # 'worked' or the model the shape comes from

  @property
  def name(self) -> str:
    shape = f'{self.in_chs}' if self.layer == 'depthwise' else f'{self.in_chs}-{self.out_chs}'
    kernel = '' if self.layer == 'pointwise' else f'k{self.kernel}'
    stride = f's{self.stride}' if self.stride > 1 else ''
    return f'{self.source}/{self.layer}{kernel}{stride}_c{shape}_{self.size}'

  def build(self, strategy: str, dtype: str | None, rngs: nnx.Rngs) -> nnx.Module:
    c, o, k, s, p = self.in_chs, self.out_chs, self.kernel, self.stride, self.padding
    kw = dict(dtype=dtype, rngs=rngs)
    if self.layer == 'standard':
      return StandardConv(c, o, k, stride=s, padding=p, **kw)
    if self.layer == 'depthwise':
      return DepthwiseConv(c, k, stride=s, padding=p, strategy=strategy, **kw)
    if self.layer == 'pointwise':
      return PointwiseConv(c, o, stride=s, **kw)
    return SeparableConv(c, o, k, stride=s, padding=p, strategy=strategy, **kw)


def worked_example(kernel: int = 3, chs: int = 256, size: int = 56) -> list[LayerSpec]:
  return [LayerSpec(layer, chs, chs, kernel, 1, size, 'same', 'worked')
          for layer in ('standard', 'depthwise', 'pointwise', 'separable')]


def model_shapes(model: str) -> list[LayerSpec]:
  """The distinct depthwise and pointwise layer shapes of a zoo model, in forward order."""
  rows, _ = model_layer_costs(model, batch=1)
  padding = 'symmetric'  # the zoo's default (PyTorch's) padding
  specs: list[LayerSpec] = []
  for row in rows:
    if row.kind not in ('depthwise', 'pointwise'):
      continue
    _, h, _, c = row.in_shape
    _, ho, _, o = row.out_shape
    stride = max(1, h // ho)
    kernel = _kernel_of(row) if row.kind == 'depthwise' else 1
    spec = LayerSpec(row.kind, c, o, kernel, stride, h, padding, model)
    if spec not in specs:
      specs.append(spec)
  return specs


def _kernel_of(row: costs.LayerCost) -> int:
  """K of a depthwise layer from its analytic params (K*K*C, no bias)."""
  return round((row.params / row.in_shape[-1]) ** 0.5)


def resolve_layer_sets(names: str | tuple[str, ...]) -> tuple[LayerSpec, ...]:
  """'worked' and/or model names (comma-separated) -> layer specs; 'none' or '' -> ()."""
  items = [n.strip() for n in (names.split(',') if isinstance(names, str) else names)]
  specs: list[LayerSpec] = []
  for item in items:
    if item in ('', 'none'):
      continue
    if item == 'worked':
      specs += worked_example()
    else:
      get_model_def(item)  # raises naming the unknown model
      specs += model_shapes(item)
  return tuple(specs)


def layer_workload(spec: LayerSpec, *, batch: int, dtype: str = 'float32',
                   strategy: str = 'grouped', concrete: bool = False
                   ) -> tuple[Workload, list[costs.LayerCost]]:
  """The layer's eval forward as a workload, and its analytic per-layer costs."""
  compute = None if dtype == 'float32' else dtype
  shape = (batch, spec.size, spec.size, spec.in_chs)
  if concrete:
    module = spec.build(strategy, compute, nnx.Rngs(0))
  else:
    module = nnx.eval_shape(lambda: spec.build(strategy, compute, nnx.Rngs(0)))
  tag_layer_scopes(module)
  rows = costs.layer_costs(module, shape)
  graphdef, state = nnx.split(module)
  images = (jax.random.normal(jax.random.key(0), shape, jnp.float32) if concrete
            else jax.ShapeDtypeStruct(shape, jnp.float32))
  if not concrete:
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  meta = dict(layer=spec.layer, source=spec.source, batch=batch, image_size=spec.size,
              dtype=dtype, strategy=strategy)
  return Workload(spec.name, make_eval_step(graphdef), (state, images), meta), rows
