"""Two or more builds of the native depthwise kernels, timed alternately in one process.

  JAX_PLATFORMS=cpu python benchmarks/native_ab.py --builds HEAD~1,worktree
  python benchmarks/native_ab.py --builds fe13a29,HEAD --passes tap_grad \\
      --shapes mobilenet_v2,efficientnet_b0 --rounds 21

Each build is a git revision (its sepnets/native sources, compiled here with sepnets.native's
flags) or `worktree` (the sources as they are, the cached library sepnets itself loads). Each
is registered with XLA:CPU under its own target names and called through the same functions
the `native` strategy calls, on every depthwise shape of the given zoo models at their default
size (or shapes given as CHANNELS@SIZE/KERNEL/STRIDE, e.g. 96@112/3/2), at --batch: the
forward pass, the input gradient and the kernel (tap) gradient. Round after round each build
runs once, in alternating order, each timed call right after an untimed one of its own, so a
slow spell of the shared machine falls on all of them; medians. Every build's output must
match the first's to 1e-5 relative. Prints a Markdown table (ms per call, and each build's
time over the first's) and the totals; runs under tcmalloc, as the peers benchmark does.
"""

import argparse
import concurrent.futures
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sepnets.runtime import use_fast_malloc  # noqa: E402

try:
  use_fast_malloc()
except (ValueError, FileNotFoundError) as err:
  sys.exit(f'native_ab: error: {err}')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sepnets import native  # noqa: E402
from sepnets.compile.depthwise_bw import DepthwiseShape, model_depthwise_shapes  # noqa: E402
from sepnets.compile.timing import side_by_side  # noqa: E402
from sepnets.layers import depthwise  # noqa: E402
from sepnets.layers.helpers import lax_padding  # noqa: E402

PASSES = ('forward', 'input_grad', 'tap_grad')
WORKTREE = 'worktree'


def parse_shapes(text: str) -> list[DepthwiseShape]:
  """Zoo model names (their distinct depthwise shapes) and CHANNELS@SIZE/KERNEL/STRIDE specs."""
  shapes: list[DepthwiseShape] = []
  for item in filter(None, (v.strip() for v in text.split(','))):
    if '@' not in item:
      try:
        found = model_depthwise_shapes(item)
      except (KeyError, ValueError) as err:
        raise ValueError(f'unknown model {item!r} ({err})') from None
      shapes += [s for s in found if s not in shapes]
      continue
    try:
      channels, rest = item.split('@')
      size, kernel, stride = rest.split('/')
      shape = DepthwiseShape(int(channels), int(kernel), int(stride), int(size))
    except ValueError:
      raise ValueError(f'bad shape {item!r}: expected CHANNELS@SIZE/KERNEL/STRIDE, '
                       'e.g. 96@112/3/2') from None
    if min(shape.channels, shape.kernel, shape.stride, shape.size) < 1:
      raise ValueError(f'bad shape {item!r}: every number must be positive')
    if shape not in shapes:
      shapes.append(shape)
  if not shapes:
    raise ValueError('no shapes given')
  return shapes


def build_library(spec: str, workdir: Path) -> Path:
  """The library of build `spec`: the cached worktree build, or a revision's sources compiled."""
  if spec == WORKTREE:
    return native.build()
  directory = workdir / spec.replace('/', '_')
  directory.mkdir(parents=True, exist_ok=True)
  for path in (*native.SOURCES, *native.HEADERS):
    rel = path.relative_to(ROOT).as_posix()
    shown = subprocess.run(['git', '-C', str(ROOT), 'show', f'{spec}:{rel}'],
                           capture_output=True)
    if shown.returncode != 0:
      raise ValueError(f'build {spec!r}: no {rel} at that revision '
                       f'({shown.stderr.decode().strip()})')
    (directory / path.name).write_bytes(shown.stdout)
  return native.compile_sources(directory, directory / 'lib.so')


def pass_calls(name: str, shape: DepthwiseShape, x: jax.Array):
  """Pass `name` (forward, input_grad or tap_grad) for `shape`: its arguments, and a function
  of a target-name suffix giving the jitted native call through the targets with that suffix."""
  kernel = (shape.kernel, shape.kernel)
  geometry = depthwise._native_geometry(x, np.zeros((*kernel, 1, 1)), (shape.stride,) * 2,
                                        lax_padding(shape.padding, kernel, (1, 1)), (1, 1))
  rng = np.random.default_rng(1)
  taps = jnp.asarray(rng.standard_normal((shape.kernel ** 2, shape.channels), np.float32))
  g = jnp.asarray(rng.standard_normal(depthwise._native_out_shape(geometry, x), np.float32))
  if name == 'forward':
    return (x, taps), lambda suffix: jax.jit(
        lambda x, t: depthwise._native_forward(geometry, x, t, suffix))
  if name == 'input_grad':
    in_hw = x.shape[1:3]
    return (g, taps), lambda suffix: jax.jit(
        lambda g, t: depthwise._native_input_grad(geometry, g, t, in_hw, suffix))
  return (x, g), lambda suffix: jax.jit(
      lambda x, g: depthwise._native_tap_grad(geometry, x, g, suffix))


def compare(builds: list[str], shapes: list[DepthwiseShape], passes: list[str], *, batch: int,
            rounds: int, say=print) -> list[dict]:
  """One row per (shape, pass): each build's median ms, in `builds` order."""
  with tempfile.TemporaryDirectory(prefix='native_ab-') as tmp:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
      libs = list(pool.map(lambda spec: build_library(spec, Path(tmp)), builds))
    suffixes = [f'__ab{i}' for i in range(len(builds))]
    for spec, lib, suffix in zip(builds, libs, suffixes):
      try:
        native.register(lib, suffix)
      except (AttributeError, OSError) as err:
        raise ValueError(f'build {spec!r} cannot be loaded: {err}') from None
    rows = []
    rng = np.random.default_rng(0)
    for shape in shapes:
      x = jnp.asarray(rng.standard_normal((batch, shape.size, shape.size, shape.channels),
                                          np.float32))
      for name in passes:
        args, jitted = pass_calls(name, shape, x)
        calls, first = {}, None
        for spec, suffix in zip(builds, suffixes):
          fn = jitted(suffix)
          out = np.asarray(fn(*args))
          if first is None:
            first = out
          else:
            err = float(np.abs(out - first).max() / max(np.abs(first).max(), 1e-30))
            if not err <= 1e-5:
              raise AssertionError(f'{shape} {name}: build {spec!r} differs from '
                                   f'{builds[0]!r} by {err:.2e} relative')
          calls[suffix] = lambda fn=fn: jax.block_until_ready(fn(*args))
        timed = side_by_side(calls, warmup=1, repeats=rounds, pause_s=0, lead_in=1)
        row = {'shape': shape, 'pass': name, 'ms': [timed[s].median_s * 1e3 for s in suffixes]}
        rows.append(row)
        say(format_row(row), file=sys.stderr, flush=True)
  return rows


def label(shape: DepthwiseShape) -> str:
  return f'{shape.channels}@{shape.size}/{shape.kernel}/{shape.stride}'


def format_row(row: dict) -> str:
  first = row['ms'][0]
  cells = [f'{ms:.3f}' if i == 0 else f'{ms:.3f} ({ms / first:.2f})'
           for i, ms in enumerate(row['ms'])]
  return f'| {label(row["shape"])} | {row["pass"]} | ' + ' | '.join(cells) + ' |'


def format_markdown(builds: list[str], rows: list[dict], batch: int, rounds: int) -> str:
  lines = [f'Batch {batch}, medians of {rounds} alternated rounds; ms per call (in '
           'parentheses, over the first build\'s).', '',
           '| shape (channels@size/kernel/stride) | pass | ' + ' | '.join(builds) + ' |',
           '|---|---|' + '---|' * len(builds)]
  lines += [format_row(r) for r in rows]
  for name in dict.fromkeys(r['pass'] for r in rows):
    sums = [sum(r['ms'][i] for r in rows if r['pass'] == name) for i in range(len(builds))]
    cells = [f'{s:.2f}' if i == 0 else f'{s:.2f} ({s / sums[0]:.2f})' for i, s in enumerate(sums)]
    lines.append(f'| **total** | {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--builds', required=True,
                      help=f'comma-separated git revisions or {WORKTREE!r}, at least two')
  parser.add_argument('--shapes', default='mobilenet_v2',
                      help='comma-separated zoo models and/or CHANNELS@SIZE/KERNEL/STRIDE')
  parser.add_argument('--passes', default=','.join(PASSES),
                      help=f'comma-separated, of {", ".join(PASSES)}')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--rounds', type=int, default=15)
  args = parser.parse_args(argv)
  builds = [b.strip() for b in args.builds.split(',') if b.strip()]
  passes = [p.strip() for p in args.passes.split(',') if p.strip()]
  if len(builds) < 2:
    parser.error('--builds: give at least two builds to compare')
  unknown = [p for p in passes if p not in PASSES]
  if unknown or not passes:
    parser.error(f'--passes: unknown {", ".join(map(repr, unknown)) or "(none given)"}; '
                 f'expected some of {", ".join(PASSES)}')
  if args.batch < 1 or args.rounds < 1:
    parser.error('--batch and --rounds must be positive')
  if jax.default_backend() != 'cpu':
    parser.error(f'the native kernels run on the CPU; this backend is '
                 f'{jax.default_backend()!r} (set JAX_PLATFORMS=cpu)')
  try:
    shapes = parse_shapes(args.shapes)
    rows = compare(builds, shapes, passes, batch=args.batch, rounds=args.rounds)
  except (ValueError, native.NativeUnavailable) as err:
    parser.error(str(err))
  print(format_markdown(builds, rows, args.batch, args.rounds))
  return 0


if __name__ == '__main__':
  sys.exit(main())
