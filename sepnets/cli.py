"""The `sepnets` command line. Thin: every subcommand calls a library function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence


def _strategies(text: str) -> tuple[str, ...]:
  from sepnets.layers.depthwise import STRATEGIES
  names = tuple(s.strip() for s in text.split(',') if s.strip())
  for name in names:
    if name not in STRATEGIES:
      raise argparse.ArgumentTypeError(
          f'unknown depthwise strategy {name!r}; expected one of {sorted(STRATEGIES)}')
  if not names:
    raise argparse.ArgumentTypeError('give at least one strategy')
  return names


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}') from None
  if value <= 0:
    raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
  return value


def _layers(args: argparse.Namespace) -> int:
  from sepnets.compile.layer_suite import SuiteConfig, format_suite, run_layer_suite, suite_runs
  from sepnets.files import atomic_write_text

  config = SuiteConfig(kernel=args.kernel, in_chs=args.in_chs, out_chs=args.out_chs,
                       height=args.height, width=args.width, batch=args.batch,
                       strategies=args.strategies, repeats=args.repeats,
                       backward=args.backward, padding=args.padding)
  total = len(suite_runs(config))
  done = [0]

  def progress(label: str) -> None:
    done[0] += 1
    print(f'[{done[0]}/{total}] {label}', file=sys.stderr, flush=True)

  result = run_layer_suite(config, progress=None if args.quiet else progress)
  text = json.dumps(result, indent=2) if args.json else format_suite(result)
  print(text)
  if args.out:
    atomic_write_text(args.out, json.dumps(result, indent=2) + '\n')
    print(f'wrote {args.out}', file=sys.stderr)
  return 0


def _models(args: argparse.Namespace) -> int:
  from sepnets.summary import format_zoo, zoo_costs
  rows = zoo_costs(args.pattern)
  if not rows:
    raise ValueError(f'no model matches {args.pattern!r}')
  if args.json:
    import dataclasses
    print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
  else:
    print(format_zoo(rows))
  return 0


def _option(text: str) -> tuple[str, object]:
  import ast
  key, sep, value = text.partition('=')
  if not sep or not key:
    raise argparse.ArgumentTypeError(f'expected KEY=VALUE, got {text!r}')
  try:
    parsed = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    parsed = value
  return key.strip(), parsed


def _summary(args: argparse.Namespace) -> int:
  from sepnets.costs import format_table
  from sepnets.summary import model_layer_costs
  overrides = dict(args.option)
  rows, size = model_layer_costs(args.name, image_size=args.image_size, batch=args.batch,
                                 mode=args.mode, **overrides)
  if args.json:
    import dataclasses
    print(json.dumps({'model': args.name, 'image_size': size, 'batch': args.batch,
                      'mode': args.mode, 'options': overrides,
                      'layers': [dataclasses.asdict(r) for r in rows]}, indent=2))
    return 0
  opts = ', '.join(f'{k}={v!r}' for k, v in overrides.items())
  print(f'{args.name} ({opts or "defaults"}), input {args.batch}x{size}x{size}, {args.mode} mode; '
        f'MACs and bytes for the whole batch\n')
  print(format_table(rows))
  return 0


def _csv(kind: type):
  def parse(text: str):
    items = [t.strip() for t in text.split(',') if t.strip()]
    if not items:
      raise argparse.ArgumentTypeError('expected a comma-separated list')
    if kind is int:
      return tuple(_positive(t) for t in items)
    return tuple(items)
  return parse


DEFAULT_MODELS = 'mobilenet_v1,mobilenet_v2,mobilenet_v3_large,mobilenet_v3_small,efficientnet_b0'


def _bench(args: argparse.Namespace) -> int:
  import time
  from sepnets.compile.suite import BenchConfig, bench_runs, resolve_dtypes, resolve_models, run_bench

  models = () if args.models.strip() in ('', 'none') else resolve_models(args.models)
  layers = tuple(n.strip() for n in args.layers.split(',') if n.strip() not in ('', 'none'))
  config = BenchConfig(models=models, targets=args.targets, layers=layers,
                       batches=args.batch, dtypes=resolve_dtypes(args.dtype), modes=args.mode,
                       image_size=args.image_size, repeats=args.repeats, strategy=args.strategy,
                       write_hlo=not args.no_hlo, plots=not args.no_plots,
                       peaks=not args.no_peaks)
  out = args.out or f'results/bench-{time.strftime("%Y%m%d-%H%M%S")}'
  from sepnets.progress import ProgressBar
  progress = None if args.quiet else ProgressBar(len(bench_runs(config)))
  run_bench(config, out, progress=progress)
  from pathlib import Path
  print(Path(out, 'report.md').read_text())
  print(f'results: {out}/results.json, results.csv, report.md, PNG plots and one folder per run '
        '(HLO, per-layer reconciliation)',
        file=sys.stderr)
  return 0


def _train_config(args: argparse.Namespace):
  from sepnets.train.config import load_config
  return load_config(args.config, args.overrides,
                     need_data=not getattr(args, 'dry_run', False))  # a dry run reads no data


def _train(args: argparse.Namespace) -> int:
  config = _train_config(args)
  if args.dry_run:
    from sepnets.train.dry_run import dry_run, format_dry_run
    print(format_dry_run(dry_run(config, target=args.target)))
    return 0
  if args.distributed is not None:
    _initialize_distributed(args.distributed)
  from sepnets.train.loop import train_and_evaluate
  summary = train_and_evaluate(config, args.workdir, progress=not args.quiet)
  import jax
  if jax.process_index() == 0:
    print(json.dumps(summary, indent=2))
  return 0


def _initialize_distributed(spec: str) -> None:
  """'auto' (Cloud TPU, SLURM, Open MPI: JAX finds the cluster) or ADDRESS:PORT,N,I."""
  import jax
  if spec == 'auto':
    jax.distributed.initialize()
    return
  try:
    address, num_processes, process_id = spec.rsplit(',', 2)
    num_processes, process_id = int(num_processes), int(process_id)
  except ValueError:
    raise ValueError(f'--distributed {spec!r}: expected auto or COORDINATOR:PORT,'
                     f'NUM_PROCESSES,PROCESS_ID (e.g. 10.0.0.1:1234,2,0)') from None
  if not 0 <= process_id < num_processes:
    raise ValueError(f'--distributed {spec!r}: process id {process_id} is not in '
                     f'[0, {num_processes})')
  jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)


def _evaluate(args: argparse.Namespace) -> int:
  from sepnets.train.loop import evaluate
  result = evaluate(_train_config(args), args.workdir, step=args.step)
  print(json.dumps(result, indent=2))
  return 0


def _quantize(args: argparse.Namespace) -> int:
  from sepnets.quant import commands
  config = _train_config(args)
  if args.action == 'sensitivity':
    result = commands.sensitivity(
        config, args.workdir, bits=args.bits, calibration_batches=args.calibration_batches,
        eval_examples=args.eval_examples, method=args.method, ema=not args.plain, out=args.out)
    for name, first in result['summary']['first_to_break'].items():
      print(f"{name}: all layers SQNR {result['all_layers'][name]['sqnr_db']:.1f} dB, accuracy "
            f"{result['all_layers'][name]['accuracy']:.4f} (float "
            f"{result['float_accuracy']:.4f}); worst layer {first['worst_layers'][0]} "
            f"({first['worst_types'][0]}); depthwise degrades first: "
            f"{'yes' if first['depthwise_degrades_first'] else 'no'}")
    print(f"report: {result['files']['md']}")
  else:
    result = commands.run_ptq(
        config, args.workdir, weight_bits=args.weight_bits,
        per_channel=args.granularity == 'per-channel', act_bits=args.act_bits or None,
        calibration_batches=args.calibration_batches, method=args.method,
        equalize=args.equalize, ema=not args.plain, out=args.out)
    print(json.dumps(result, indent=2))
  return 0


def _add_config_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--config', required=True, metavar='FILE[:PRESET]',
                      help='a config file, e.g. configs/smoke.py or configs/smoke.py:tiny; '
                      'override any key with --config.KEY=VALUE (e.g. --config.train.steps=100)')
  parser.add_argument('--workdir', required=True,
                      help='checkpoints, metrics.jsonl and summary.json go here; running again '
                      'resumes from the latest checkpoint')


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='sepnets', description=__doc__)
  parser.add_argument('--version', action='version', version=_version())
  sub = parser.add_subparsers(dest='command', required=True)

  layers = sub.add_parser(
      'layers', help='standard vs depthwise vs pointwise vs separable: params, MACs, '
      'compiled flops and bytes, CPU time per depthwise strategy',
      description='Compares standard, depthwise, pointwise and depthwise-separable convs '
      'at one shape (default: the worked example K=3, C_in=C_out=256, 8x56x56).')
  layers.add_argument('--kernel', '-k', type=_positive, default=3)
  layers.add_argument('--in-chs', type=_positive, default=256)
  layers.add_argument('--out-chs', type=_positive, default=256)
  layers.add_argument('--height', type=_positive, default=56)
  layers.add_argument('--width', type=_positive, default=56)
  layers.add_argument('--batch', type=_positive, default=8)
  layers.add_argument('--padding', choices=('same', 'symmetric', 'valid'), default='same')
  layers.add_argument('--strategies', type=_strategies, default=('grouped', 'shift', 'native'),
                      help='comma-separated depthwise strategies (grouped, shift, native, auto)')
  layers.add_argument('--repeats', type=_positive, default=5, help='timed runs per measurement')
  layers.add_argument('--no-backward', dest='backward', action='store_false',
                      help='skip timing forward+backward')
  layers.add_argument('--json', action='store_true', help='print JSON instead of a table')
  layers.add_argument('--out', help='also write the JSON result to this file (atomically)')
  layers.add_argument('--quiet', action='store_true', help='no progress lines on stderr')
  layers.set_defaults(func=_layers)

  models = sub.add_parser('models', help='list the zoo with params and MACs at default resolution')
  models.add_argument('pattern', nargs='?', default='*', help="shell pattern, e.g. 'mobilenet*'")
  models.add_argument('--json', action='store_true')
  models.set_defaults(func=_models)

  summary = sub.add_parser('summary', help='per-layer table of one model (layer, type, shape, '
                           'params, MACs, activation bytes)')
  summary.add_argument('name')
  summary.add_argument('--image-size', type=_positive, default=None,
                       help="default: the model's own resolution")
  summary.add_argument('--batch', type=_positive, default=1)
  summary.add_argument('--mode', choices=('eval', 'train'), default='eval')
  summary.add_argument('-o', '--option', type=_option, action='append', default=[],
                       metavar='KEY=VALUE', help='model option, e.g. -o width=0.5 (repeatable)')
  summary.add_argument('--json', action='store_true')
  summary.set_defaults(func=_summary)

  bench = sub.add_parser('bench', help='lower, compile and measure zoo models per target',
                         description='Compiles each model x target x batch x dtype x mode, '
                         'dumps StableHLO and optimized HLO, records cost and memory analysis '
                         'and an op census, and times the local CPU.')
  bench.add_argument('--models', default=DEFAULT_MODELS,
                     help="comma-separated names or patterns, e.g. 'mobilenet*' ('none': only "
                     'layers)')
  bench.add_argument('--layers', default='worked',
                     help="layer workloads: 'worked' (the K=3, C=256 example) and/or model "
                     "names (their distinct depthwise and pointwise shapes), or 'none'")
  bench.add_argument('--targets', type=_csv(str), default=('cpu', 'tpu:v5e', 'gpu:h100'),
                     help='comma-separated: cpu, gpu, tpu:v4, tpu:v5e, tpu:v5p, tpu:v6e, '
                     'gpu:a100, gpu:h100, gpu:h200 (targets whose extra is missing are skipped)')
  bench.add_argument('--batch', type=_csv(int), default=(1,), help='comma-separated batch sizes')
  bench.add_argument('--dtype', default='fp32', help='comma-separated: fp32, bf16')
  bench.add_argument('--mode', type=_csv(str), default=('infer',), help='comma-separated: infer, train')
  bench.add_argument('--image-size', type=_positive, default=None,
                     help="default: each model's own resolution")
  bench.add_argument('--strategy', default='auto', help='depthwise strategy (grouped, shift, auto)')
  bench.add_argument('--repeats', type=_positive, default=5, help='timed runs on the CPU')
  bench.add_argument('--out', help='output folder (default results/bench-TIMESTAMP)')
  bench.add_argument('--no-hlo', action='store_true', help='do not write the HLO files')
  bench.add_argument('--no-plots', action='store_true', help='do not draw the PNG plots')
  bench.add_argument('--no-peaks', action='store_true',
                     help='do not measure peak FLOP/s and copy bandwidth (no roofline)')
  bench.add_argument('--quiet', action='store_true', help='no progress lines on stderr')
  bench.set_defaults(func=_bench)

  train = sub.add_parser('train', help='train a zoo model from a config (resumes in --workdir)',
                         description='Trains per an ml_collections config; checkpoints, metrics '
                         'and a summary go to --workdir, and the same command resumes there.')
  _add_config_args(train)
  train.add_argument('--dry-run', action='store_true',
                     help='compile the sharded train step for --target and report per-device '
                     'memory, without data or training')
  train.add_argument('--target', default='cpu',
                     help='with --dry-run: cpu, tpu:GEN[:TOPOLOGY] (e.g. tpu:v5e:2x2) or gpu:NAME')
  train.add_argument('--quiet', action='store_true', help='no progress bar')
  train.add_argument('--distributed', metavar='auto|ADDRESS:PORT,N,I', default=None,
                     help='multi-host data parallel: jax.distributed.initialize() with the '
                     "cluster found automatically ('auto': Cloud TPU, SLURM, Open MPI) or "
                     'coordinator address, number of processes and this process id; run the '
                     'same command on every host with the same --workdir (shared filesystem)')
  train.set_defaults(func=_train)

  evaluate = sub.add_parser('evaluate', help="evaluate a workdir's latest checkpoint")
  _add_config_args(evaluate)
  evaluate.add_argument('--step', type=int, default=None, help='a checkpointed step (default: latest)')
  evaluate.set_defaults(func=_evaluate)

  quantize = sub.add_parser('quantize', help="INT8 post-training quantization of a trained "
                            "workdir: 'ptq' (one setting, all layers) or 'sensitivity' (per layer)")
  quantize.add_argument('action', choices=('ptq', 'sensitivity'))
  _add_config_args(quantize)
  quantize.add_argument('--calibration-batches', type=int, default=8,
                        help='training batches (evaluation transform) for activation ranges')
  quantize.add_argument('--method', choices=('minmax', 'percentile', 'mse'), default='minmax',
                        help='activation range calibration')
  quantize.add_argument('--plain', action='store_true',
                        help='quantize the plain weights, not the EMA (when the run kept one)')
  quantize.add_argument('--out', default=None, help='output folder (default: WORKDIR/quant)')
  quantize.add_argument('--bits', type=_csv(int), default=(8, 4),
                        help='sensitivity: comma-separated weight bit widths (4..8)')
  quantize.add_argument('--eval-examples', type=int, default=2000,
                        help='sensitivity: evaluation images per measurement')
  quantize.add_argument('--weight-bits', type=int, default=8, help='ptq: weight bits (4..8)')
  quantize.add_argument('--act-bits', type=int, default=8,
                        help='ptq: activation bits (4..8; 0 keeps activations float)')
  quantize.add_argument('--granularity', choices=('per-channel', 'per-tensor'),
                        default='per-channel', help='ptq: weight scales')
  quantize.add_argument('--equalize', action='store_true',
                        help='ptq: cross-layer equalization first (Nagel et al. 2019; ReLU6 '
                        'pairs become ReLU)')
  quantize.set_defaults(func=_quantize)
  return parser


def _split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]):
  """argparse cannot declare --config.KEY=VALUE; collect them for train and evaluate."""
  args, extra = parser.parse_known_args(argv)
  overrides, rest = [], []
  items = list(extra)
  while items:
    item = items.pop(0)
    if item.startswith('--config.') and args.command in ('train', 'evaluate', 'quantize'):
      key_value = item[len('--config.'):]
      if '=' not in key_value:
        if not items:
          parser.error(f'{item} needs a value (--config.KEY=VALUE)')
        key_value = f'{key_value}={items.pop(0)}'
      overrides.append(key_value)
    else:
      rest.append(item)
  if rest:
    parser.error(f'unrecognized arguments: {" ".join(rest)}')
  args.overrides = overrides
  return args


def _version() -> str:
  from sepnets import __version__
  return f'sepnets {__version__}'


def main(argv: Sequence[str] | None = None) -> int:
  # With the CUDA plugin installed on a machine without a GPU, its version check would fail
  # the whole backend start; deviceless GPU compilation needs it skipped (set before jax
  # starts its backends, which it does lazily).
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
  from sepnets.runtime import tune_malloc
  try:
    tune_malloc()  # before JAX starts its threads; SEPNETS_MALLOC=default opts out
  except ValueError as err:  # a bad SEPNETS_MALLOC
    sys.exit(f'sepnets: error: {err}')
  parser = build_parser()
  args = _split_overrides(parser, sys.argv[1:] if argv is None else argv)
  try:
    return args.func(args)
  except (ValueError, FileNotFoundError) as err:
    parser.exit(2, f'sepnets {args.command}: error: {err}\n')
  except RuntimeError as err:  # checkpoint errors, a diverged run
    from sepnets.train.checkpoint import CheckpointError
    from sepnets.train.loop import TrainingDiverged
    if isinstance(err, (CheckpointError, TrainingDiverged)):
      parser.exit(1, f'sepnets {args.command}: error: {err}\n')
    raise


if __name__ == '__main__':
  sys.exit(main())
