"""sepnets vs PyTorch (and Keras 3 on JAX) on identical architectures, side by side in one run.

  pip install -e ".[torch]"
  bash .ci/tcmalloc                                       # preloaded for both libraries
  JAX_PLATFORMS=cpu python benchmarks/peers.py            # mobilenet_v2, mobilenet_v3_large,
                                                          # efficientnet_b0 at 224, fp32
  python benchmarks/peers.py --dtype bfloat16 --infer-batches 256 --train-batch 256 \
      --peers torch                                       # on an NVIDIA GPU (JAX and torch
                                                          # with CUDA): bf16 mixed precision

Times inference at batch 1 and 32 and the train step (forward, backward, SGD with momentum) at
batch 32 for each library (PyTorch on the device JAX runs on), prints the Markdown table of
times and ratios (sepnets / peer) and writes it with the raw JSON to OUT (default
results/peers-TIMESTAMP/).
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault('KERAS_BACKEND', 'jax')
# On a GPU, JAX would take 75% of its memory up front; PyTorch, in the same process, needs room.
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.45')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sepnets.runtime import malloc_state, use_fast_malloc  # noqa: E402

# First, as it may re-execute this script under tcmalloc: the same malloc for every library
# in the process (SEPNETS_MALLOC=tuned keeps glibc, tuned; =default leaves it as it is).
try:
  use_fast_malloc()
except (ValueError, FileNotFoundError) as err:  # a bad SEPNETS_MALLOC or SEPNETS_TCMALLOC
  sys.exit(f'peers: error: {err}')
from sepnets.compile.peers import (MODELS, PEERS, PeersConfig, format_markdown,  # noqa: E402
                                   run_peers)
from sepnets.files import atomic_write_text  # noqa: E402


def _csv(kind):
  return lambda text: tuple(kind(v) for v in text.split(',') if v.strip())


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', type=_csv(str), default=MODELS)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--infer-batches', type=_csv(int), default=(1, 32))
  parser.add_argument('--train-batch', type=int, default=32, help='0: no train step')
  parser.add_argument('--peers', type=_csv(str), default=PEERS,
                      help='torch is always run; add keras for Keras 3 on JAX')
  parser.add_argument('--strategy', default='auto', help='sepnets depthwise strategy')
  parser.add_argument('--dtype', default='float32',
                      help='float32, or bfloat16: mixed precision (fp32 parameters, bf16 compute)')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--min-time', type=float, default=1.0,
                      help='time more than --repeats calls where they are short: as many as '
                      'take this many seconds (at most 200)')
  parser.add_argument('--pause', type=float, default=0.02,
                      help='seconds of untimed pause before each timed call, so the other '
                      "library's worker threads have stopped spinning")
  parser.add_argument('--layers', default='mobilenet_v2',
                      help="depthwise roofline table for this model's depthwise shapes "
                      "('none' skips it)")
  parser.add_argument('--layer-batch', type=int, default=32)
  parser.add_argument('--layer-strategies', type=_csv(str), default=None,
                      help='default: grouped, shift and native (native on the CPU only)')
  parser.add_argument('--out', default=None, help='output folder (default results/peers-TIME)')
  args = parser.parse_args()
  try:
    config = PeersConfig(models=args.models, image_size=args.image_size,
                         infer_batches=args.infer_batches, train_batch=args.train_batch,
                         peers=args.peers, strategy=args.strategy, warmup=args.warmup,
                         repeats=args.repeats, pause_s=args.pause, dtype=args.dtype,
                         min_time_s=args.min_time)
  except ValueError as e:
    parser.error(str(e))
  import jax
  from sepnets.compile import depthwise_bw
  if args.layer_strategies is None:
    args.layer_strategies = depthwise_bw.strategies_for(jax.default_backend(),
                                                        ('grouped', 'shift', 'native'))
  elif args.layers != 'none':
    try:  # before the models' run, not after it
      depthwise_bw.check_strategies(jax.default_backend(), args.layer_strategies)
    except ValueError as e:
      parser.error(f'--layer-strategies: {e}')
  out = Path(args.out or f'results/peers-{time.strftime("%Y%m%d-%H%M%S")}')
  result = run_peers(config, progress=lambda m: print(m, file=sys.stderr, flush=True))
  result['metadata']['malloc'] = malloc_state()
  command = 'python benchmarks/peers.py ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])
  text = format_markdown(result, command.strip())
  if args.layers != 'none':
    print(f'{args.layers}: depthwise layers', file=sys.stderr, flush=True)
    rows = depthwise_bw.measure(depthwise_bw.model_depthwise_shapes(args.layers),
                                args.layer_strategies, batch=args.layer_batch,
                                dtype=args.dtype)
    result['depthwise'] = {'model': args.layers, 'rows': rows,
                           'totals': depthwise_bw.strategy_totals(rows)}
    text += f'\n## {args.layers}: every depthwise shape\n\n' + depthwise_bw.format_markdown(rows)
  out.mkdir(parents=True, exist_ok=True)
  atomic_write_text(str(out / 'peers.json'), json.dumps(result, indent=2) + '\n')
  atomic_write_text(str(out / 'peers.md'), text)
  print(text)
  print(f'wrote {out}/peers.md', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
