"""The model registry: one ModelDef per name, assembled from an explicit tuple of families."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from flax import nnx

from sepnets.net import SeparableNet
from sepnets.specs import NetSpec


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """A registered model.

  Args:
    name: registry name (stable; it names checkpoints).
    family: e.g. 'mobilenet_v2'.
    paper: link to the paper.
    default_image_size: the resolution the reference reports its MACs at.
    make_spec: family options (keyword-only, with defaults) -> (NetSpec, width, depth).
    reference: the implementation the counts and weights match ('torchvision:mobilenet_v2').
    defaults: defaults of the common options that differ from SeparableNet's
      (e.g. EfficientNet's drop_path_rate 0.2).
  """
  name: str
  family: str
  paper: str
  default_image_size: int
  make_spec: Callable[..., tuple[NetSpec, float, float]]
  reference: str
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

  @property
  def family_options(self) -> dict[str, Any]:
    """The model's own options (e.g. width) and their defaults."""
    return {name: p.default for name, p in inspect.signature(self.make_spec).parameters.items()}

  @property
  def options(self) -> dict[str, Any]:
    """Every option create_model accepts for this model, with its default."""
    common = {name: p.default for name, p in inspect.signature(SeparableNet.__init__).parameters.items()
              if p.kind is p.KEYWORD_ONLY and name not in ('rngs', 'width', 'depth')}
    return {**common, **dict(self.defaults), **self.family_options}


def _families():
  from sepnets.models import efficientnet, mobilenet_v1, mobilenet_v2, mobilenet_v3, mobilenet_v4
  return (mobilenet_v1, mobilenet_v2, mobilenet_v3, mobilenet_v4, efficientnet)


def _build_registry() -> dict[str, ModelDef]:
  registry: dict[str, ModelDef] = {}
  for family in _families():
    for model_def in family.MODEL_DEFS:
      if model_def.name in registry:
        raise ValueError(f'duplicate model name {model_def.name!r} in {family.__name__}')
      registry[model_def.name] = model_def
  return registry


_REGISTRY: dict[str, ModelDef] | None = None


def _registry() -> dict[str, ModelDef]:
  global _REGISTRY
  if _REGISTRY is None:
    _REGISTRY = _build_registry()
  return _REGISTRY


def list_models(pattern: str = '*') -> list[str]:
  """Registered model names matching a shell-style pattern, in zoo order."""
  return [name for name in _registry() if fnmatch.fnmatchcase(name, pattern)]


def get_model_def(name: str) -> ModelDef:
  """The ModelDef of `name`; unknown names raise with close-match suggestions."""
  registry = _registry()
  if name not in registry:
    close = difflib.get_close_matches(str(name), list(registry), n=3, cutoff=0.5)
    hint = f'; did you mean {", ".join(map(repr, close))}?' if close else ''
    raise ValueError(f'unknown model {name!r}{hint} (see sepnets.list_models())')
  return registry[name]


def create_model(name: str, *, rngs: nnx.Rngs, **overrides: Any) -> SeparableNet:
  """Builds registered model `name` in eval mode.

  Args:
    name: a name from `list_models()`.
    rngs: parameter (and dropout) random streams.
    **overrides: any of `get_model_def(name).options` (num_classes, in_chans, dropout,
      drop_path_rate, padding, strategy, dtype, param_dtype, and the family's own, e.g.
      width); unknown names raise listing the valid ones.
  """
  model_def = get_model_def(name)
  valid = model_def.options
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f'unknown option(s) {", ".join(map(repr, unknown))} for model {name!r}; '
                     f'valid options: {", ".join(valid)}')
  family_opts = {k: overrides[k] for k in model_def.family_options if k in overrides}
  spec, width, depth = model_def.make_spec(**family_opts)
  common = {**dict(model_def.defaults),
            **{k: v for k, v in overrides.items() if k not in model_def.family_options}}
  model = SeparableNet(spec, width=width, depth=depth, rngs=rngs, **common)
  model.eval()
  return model
