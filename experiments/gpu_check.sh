#!/usr/bin/env bash
# One GPU check, < 5 minutes on a single-GPU machine with no network.
#
#   bash experiments/gpu_check.sh            # writes JSON and logs to $OUT (default /tmp/gpu_check)
#
# Expects jax, flax, optax, chex, orbax-checkpoint (and torch for the peer row)
# installed. Packages the image lacks travel as wheels in .whl/ (ml_collections,
# tensorboardX) and MNIST-1D as .data/mnist1d.npz, made on the CPU side with
#   python -m experiments.data.mnist1d --export .data/mnist1d.npz
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
status=0
step() { echo; echo "=== $1 ($(date +%T))"; }

step "device"
nvidia-smi -L | tee "$OUT/nvidia_smi.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee "$OUT/versions.txt"

step "core and train-step tests on the GPU"
JAX_PLATFORMS=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_penalty.py tests/test_losses.py tests/test_cost.py tests/test_checks.py \
  tests/test_schedules.py tests/test_params.py tests/test_training.py tests/test_checkpoint.py \
  2>&1 | tee "$OUT/pytest_gpu.log" | tail -n 25 || status=1

step "kernel-gradient determinism"
timeout 60 python3 -m experiments.determinism --out "$OUT/determinism.json" || status=1

step "benchmarks (--quick)"
timeout 150 python3 -m experiments.bench --quick --out "$OUT/bench_quick.json" 2>&1 | tee "$OUT/bench.log" || status=1

step "MNIST-1D main job on the GPU"
MNIST1D_NPZ=.data/mnist1d.npz timeout 200 python3 -m experiments.train --workdir /tmp/mnist1d_gpu \
  2>&1 | tr '\r' '\n' | grep -v "step/s" | tee "$OUT/mnist1d.log" || status=1
cp /tmp/mnist1d_gpu/summary.json "$OUT/mnist1d_summary.json" 2>/dev/null || status=1

step "done (status $status)"
exit $status
