#!/usr/bin/env bash
# The GPU half of the peers benchmark: sepnets against PyTorch on one NVIDIA GPU, in bf16 mixed
# precision at batch 256 (inference and the train step), then mobilenet_v2's depthwise shapes
# per strategy on that GPU, which is what `auto` should run there (depthwise.AUTO_CHOICE).
#
#   bash benchmarks/gpu_peers.sh            # writes under $OUT, else results/gpu
#
# Needs python3 (or $PYTHON) with jax and torch built for CUDA, flax, optax and torchvision;
# the checkout is put on PYTHONPATH, nothing is installed. A smoke run on tiny images comes
# first, so an incompatible library shows in a minute rather than after the long run's
# compilation. The native kernels are XLA:CPU-only, so they are not built (SEPNETS_NATIVE=0).
set -uo pipefail
out=${OUT:-results/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SEPNETS_NATIVE=0
nvidia-smi -L || exit 1
"$py" -c "import jax, flax, optax, torch; from importlib.metadata import version
print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__, '| optax',
      optax.__version__, '| torch', torch.__version__, torch.cuda.get_device_name(),
      '| torchvision', version('torchvision'))" || exit 1

step() {  # step NAME SECONDS ARGS...: one peers run, its log kept next to its tables
  local name=$1 limit=$2
  shift 2
  echo "== $name (at ${SECONDS}s, limit ${limit}s): benchmarks/peers.py $*"
  timeout "$limit" "$py" benchmarks/peers.py --peers torch --dtype bfloat16 --out "$out/$name" \
      "$@" > "$out/$name.log" 2>&1
  local rc=$?
  grep -v '^WARNING' "$out/$name.log" | tail -n 60
  return $rc
}

step smoke 240 --image-size 64 --infer-batches 2 --train-batch 2 --warmup 1 --repeats 1 \
    --layers none || exit 1
step bf16 420 --infer-batches 256 --train-batch 256 --repeats 10 --layer-batch 256 || exit 1
# The models again with the other strategy, where the time is left (a shared device lease).
if (( SECONDS < 330 )); then
  step bf16-shift 240 --infer-batches 256 --train-batch 256 --repeats 10 --strategy shift \
      --layers none
fi
echo "== done at ${SECONDS}s"
