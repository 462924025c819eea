"""Depthwise convolutions against the memory roofline: achieved bandwidth over copy bandwidth.

A depthwise conv does K*K multiply-adds per output element, far too few to be compute-bound, so
its limit is memory: the least it must move is its input and kernel in and its output out
(forward), and the input, kernel and output gradient in and both gradients out (backward).
Achieved bandwidth is those compulsory bytes over the measured time; the fraction compares it
with the copy bandwidth (`y = x + 1`) on the same working set (a copy moving as many bytes),
the best a memory-bound op can do on this machine with its data where the layer's is: in cache
for the small shapes, in memory for the large ones.

The copy is timed alternately with the layer, round by round, so both see the machine in the
same state: on a shared virtual machine the copy bandwidth of one working set moves by tens of
percent over a few minutes, and a copy measured once, at another moment, moves the fraction with
it. Each timed call (layer or copy) comes right after an untimed call of its own, so its data is
as warm as in a loop over it, not evicted by the other. The copy bandwidth is the copy's fastest
run. The headline fraction takes the layer's median (typical against best: the conservative
reading); `*_fastest_fraction` takes the layer's fastest run too, the like-for-like reading,
which a noisy machine moves less. `copy_bandwidth`, where given, replaces the copy with a figure
per working-set size (tests, or a copy measured elsewhere).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sepnets.compile.layer_workloads import model_shapes
from sepnets.compile.peaks import copy_call
from sepnets.compile.timing import Timing, side_by_side, time_compiled
from sepnets.layers.conv import DepthwiseConv

F32 = 4
CPU_ONLY = ('native',)  # strategies with kernels for XLA:CPU alone


@dataclasses.dataclass(frozen=True)
class DepthwiseShape:
  channels: int
  kernel: int
  stride: int
  size: int  # input height = width
  padding: str = 'symmetric'

  @property
  def out_size(self) -> int:
    return (self.size - 1) // self.stride + 1  # 'symmetric' / 'same' padding

  def bytes(self, batch: int, itemsize: int = F32) -> dict[str, int]:
    """Compulsory bytes (`itemsize` bytes an element) of the forward and the backward pass."""
    x = batch * self.size ** 2 * self.channels * itemsize
    y = batch * self.out_size ** 2 * self.channels * itemsize
    k = self.kernel ** 2 * self.channels * itemsize
    return {'forward': x + k + y, 'backward': y + x + k + x + k}


def model_depthwise_shapes(model: str) -> list[DepthwiseShape]:
  """The distinct depthwise layer shapes of a zoo model, in forward order."""
  return [DepthwiseShape(s.in_chs, s.kernel, s.stride, s.size, s.padding)
          for s in model_shapes(model) if s.layer == 'depthwise']


def strategies_for(platform: str, strategies: Sequence[str]) -> tuple[str, ...]:
  """`strategies` less those that cannot run on `platform` (the CPU-only `native` elsewhere)."""
  return tuple(s for s in strategies if platform == 'cpu' or s not in CPU_ONLY)


def check_strategies(platform: str, strategies: Sequence[str]) -> None:
  """Raises ValueError naming any of `strategies` that cannot run on `platform`."""
  refused = sorted(set(strategies) - set(strategies_for(platform, strategies)))
  if refused:
    raise ValueError(f'depthwise strategy {", ".join(map(repr, refused))} runs on the CPU '
                     f'only; this backend is {platform!r}')


def _functions(shape: DepthwiseShape, strategy: str, batch: int, dtype: Any = jnp.float32
               ) -> tuple[Callable, Callable, tuple, tuple]:
  conv = DepthwiseConv(shape.channels, shape.kernel, stride=shape.stride,
                       padding=shape.padding, strategy=strategy, rngs=nnx.Rngs(0),
                       param_dtype=dtype)
  kernel = conv.kernel[...]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, shape.size, shape.size, shape.channels),
                                      np.float32), dtype)
  dy = jnp.asarray(rng.standard_normal((batch, shape.out_size, shape.out_size,
                                        shape.channels), np.float32), dtype)

  def apply(k, v):
    return conv.conv_with(v, k)

  forward = jax.jit(apply)
  backward = jax.jit(lambda k, v, g: jax.vjp(apply, k, v)[1](g))
  return forward, backward, (kernel, x), (kernel, x, dy)


def _time_with_copy(call: Callable[[], Any], copy: Callable[[], Any], moved: int, repeats: int
                    ) -> tuple[Timing, float]:
  """The layer's timing and the copy's bandwidth (its fastest run), timed alternately, each
  timed call right after an untimed one of its own (its data as warm as in a loop over it)."""
  timed = side_by_side({'layer': call, 'copy': copy}, warmup=1, repeats=repeats, pause_s=0,
                       lead_in=1)
  return timed['layer'], moved / timed['copy'].min_s


def measure(shapes: Sequence[DepthwiseShape], strategies: Sequence[str], *, batch: int,
            repeats: int = 10, copy_bandwidth: Callable[[int], float] | None = None,
            dtype: str = 'float32') -> list[dict[str, Any]]:
  """One row per (shape, strategy): times, achieved GB/s and the fraction of the copy
  bandwidth on the same working set, by default timed alternately with each pass of each
  layer; `copy_bandwidth(bytes moved)`, where given, supplies it instead (asked once per
  size). Inputs, kernel and gradients are `dtype` (the bytes counted accordingly); a strategy
  that cannot run on this backend (`native` off the CPU) is refused by name."""
  platform = jax.default_backend()
  check_strategies(platform, strategies)
  dt = jnp.dtype(dtype)
  given: dict[int, float] = {}  # copy_bandwidth's answer per size
  copies: dict[int, tuple[Callable[[], Any], int]] = {}  # compiled copy and its bytes, per size
  rows = []
  for shape in shapes:
    nbytes = shape.bytes(batch, dt.itemsize)
    for strategy in strategies:
      forward, backward, fargs, bargs = _functions(shape, strategy, batch, dt)
      row: dict[str, Any] = {**dataclasses.asdict(shape), 'batch': batch,
                             'strategy': strategy, 'repeats': repeats, 'dtype': dt.name,
                             'platform': platform}
      for name, fn, args in (('forward', forward, fargs), ('backward', backward, bargs)):
        moved = nbytes[name]
        if copy_bandwidth is not None:
          timing = time_compiled(fn, *args, repeats=repeats)
          if moved not in given:
            given[moved] = copy_bandwidth(moved)
          copy = given[moved]
        else:
          if moved not in copies:
            copies[moved] = copy_call(jax.devices()[0], moved // 2)
          copy_fn, copy_moved = copies[moved]
          call = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))  # noqa: E731
          timing, copy = _time_with_copy(call, copy_fn, copy_moved, repeats)
        seconds = timing.median_s
        achieved = moved / seconds
        row.update({f'{name}_ms': seconds * 1e3, f'{name}_bytes': moved,
                    f'{name}_gbps': achieved / 1e9, f'{name}_copy_gbps': copy / 1e9,
                    f'{name}_fraction': achieved / copy,
                    f'{name}_fastest_ms': timing.min_s * 1e3,
                    f'{name}_fastest_fraction': moved / timing.min_s / copy})
      rows.append(row)
  return rows


def strategy_totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Per strategy, its median times summed over the shapes measured for every strategy
  (forward, and forward + backward, in ms); the fastest of each; and what `auto` runs on the
  rows' platform, to hold the choice (`depthwise.AUTO_CHOICE`) against the measurement."""
  from sepnets.layers.depthwise import auto_choice
  strategies = list(dict.fromkeys(r['strategy'] for r in rows))
  shapes = {s: {_shape_key(r) for r in rows if r['strategy'] == s} for s in strategies}
  common = set.intersection(*shapes.values()) if shapes else set()
  totals = {s: {'forward_ms': 0.0, 'train_ms': 0.0} for s in strategies}
  for r in rows:
    if _shape_key(r) in common:
      totals[r['strategy']]['forward_ms'] += r['forward_ms']
      totals[r['strategy']]['train_ms'] += r['forward_ms'] + r['backward_ms']
  platform = rows[0].get('platform', jax.default_backend()) if rows else jax.default_backend()
  out: dict[str, Any] = {'platform': platform, 'shapes': len(common), 'totals': totals,
                         'auto': auto_choice(platform)}
  for key in ('forward_ms', 'train_ms'):
    out[f'fastest_{key[:-3]}'] = (min(strategies, key=lambda s: totals[s][key])
                                  if strategies else None)
  return out


def _shape_key(row: dict[str, Any]) -> tuple:
  return (row['channels'], row['kernel'], row['stride'], row['size'], row['padding'])


def format_totals(totals: dict[str, Any]) -> str:
  """`strategy_totals` as one Markdown paragraph."""
  t = totals['totals']
  def listing(key: str) -> str:
    return ', '.join(f"`{s}` {v[key]:.2f}" for s, v in t.items())
  auto = totals['auto']
  verdict = ('the fastest measured here' if auto in (totals['fastest_forward'],
                                                      totals['fastest_train'])
             else 'not the fastest measured here' if auto in t
             else 'not among the strategies measured')
  return (f"Summed over the {totals['shapes']} shapes on {totals['platform']}, ms: forward "
          f"{listing('forward_ms')}; forward + backward {listing('train_ms')}. Fastest: "
          f"`{totals['fastest_forward']}` forward, `{totals['fastest_train']}` forward + "
          f"backward. `auto` runs `{auto}` on {totals['platform']}: {verdict}.\n")


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
  repeats = rows[0]['repeats'] if rows else 10
  where = (f" ({rows[0].get('dtype', 'float32')} on {rows[0].get('platform', 'cpu')})"
           if rows else '')
  lines = [f'Depthwise layers{where} against the memory roofline: compulsory bytes / time, as a '
           'fraction '
           f'of the copy bandwidth (`y = x + 1`, fastest of {repeats}, timed alternately with the '
           'layer, each timed call after an untimed one of its own) on the same working set (a '
           'copy moving as many bytes). ms and GB/s are medians; "/ copy" is the median\'s '
           'fraction, "fastest / copy" the fastest run\'s.', '',
           '| layer (C, K, stride, input) | batch | strategy | fwd ms | fwd GB/s | copy GB/s '
           '| fwd / copy | fastest / copy | bwd ms | bwd GB/s | copy GB/s | bwd / copy '
           '| fastest / copy |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['channels']}, {r['kernel']}x{r['kernel']}, s{r['stride']}, {r['size']}x"
        f"{r['size']} | {r['batch']} | {r['strategy']} | {r['forward_ms']:.2f} | "
        f"{r['forward_gbps']:.1f} | {r['forward_copy_gbps']:.1f} | "
        f"**{r['forward_fraction']:.0%}** | {r['forward_fastest_fraction']:.0%} | "
        f"{r['backward_ms']:.2f} | {r['backward_gbps']:.1f} | {r['backward_copy_gbps']:.1f} | "
        f"{r['backward_fraction']:.0%} | {r['backward_fastest_fraction']:.0%} |")
  text = '\n'.join(lines) + '\n'
  return text + ('\n' + format_totals(strategy_totals(rows)) if rows else '')
