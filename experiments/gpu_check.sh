#!/usr/bin/env bash
# The GPU check: one script, sized for at most 6 minutes on a single-GPU machine with no network,
# JAX compilation included (each stage has a `timeout`; their sum is 5.5 minutes plus the
# device stage). GPU_CHECK_FULL=1 adds MobileNet / BERT-base / WRN-28-10 rows and more
# tests (about 9 more minutes: their timeouts).
#
#   OUT=/some/dir bash experiments/gpu_check.sh        # JSON and logs to $OUT (default /tmp/gpu_check)
#
# Expects jax (CUDA), flax, optax, chex, orbax-checkpoint and torch installed. What the
# image lacks travels with the checkout: wheels in .whl/ (ml_collections, tensorboardX),
# made with `pip download --no-deps ... -d .whl`, and MNIST-1D as .data/mnist1d.npz, made
# on the CPU side with `python -m experiments.data.mnist1d --export .data/mnist1d.npz`.
# Stages run in order of importance, each with its own time limit and output file, so a
# cut-short run still returns what it finished; the first, paper_speed, also rewrites its
# JSON after each row. How to run it and how to read it: docs/gpu.md (the 2026-11-26 H200
# run's output, from before paper_speed existed: docs/results/gpu-h200-2026-11-26/).
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
stage() { echo; echo "=== $1 ($(date +%T))"; }

stage "device"
nvidia-smi -L
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"

stage "paper_speed: the ResNet-44 CIFAR training program, R = 1, 2, 10 runs x batch 64, + PyTorch peer"
# Work in order of importance; nothing new starts after --max-time; unroll at R=10 runs in
# a child under --row-timeout; each torch variant in a child under --peer-timeout.
timeout 200 python3 -m experiments.bench paper-speed --out "$OUT/paper_speed.json" \
  --runs 1,2,10 --modes vmap,vmap_loop,sequential_loop,unroll,sequential --dtypes float32,bfloat16 --steps-per-call 50 \
  --reps 3 --row-time 5 --max-time 165 --row-timeout 60 \
  --peer eager,reduce-overhead,max-autotune-no-cudagraphs --peer-timeout 90 \
  --xla-variants cmdbuf_while,cmdbuf_off 2>&1 | grep -v cuda_timer | tail -n 45 || status=1

stage "kernel-gradient determinism (ours vs a plain gather's scatter-add)"
timeout 20 python3 -m experiments.bench determinism --out "$OUT/determinism.json" | tail -n 20 || status=1

stage "benchmarks: penalty vs k, MNIST-1D CNN, ResNet-44 b128 (CE vs CE+PMM, no peer)"
timeout 45 python3 -m experiments.bench --quick --only penalty --only cnn1d --only resnet44 \
  --no-peer --max-time 5 --out "$OUT/bench_core.json" 2>&1 | grep -v cuda_timer | tail -n 30 || status=1

stage "MNIST-1D main job (baseline and PMM x 5 seeds)"
MNIST1D_NPZ=.data/mnist1d.npz timeout 40 python3 -m experiments.train --workdir /tmp/mnist1d_gpu \
  --methods=baseline,pmm 2>&1 | tr '\r' '\n' | grep -v "step/s" | tail -n 16 || status=1
cp /tmp/mnist1d_gpu/summary.json "$OUT/mnist1d_summary.json" 2>/dev/null || status=1

stage "core and train-step tests on the GPU"
tests=(tests/test_penalty.py tests/test_training.py)
[ "${GPU_CHECK_FULL:-0}" = 1 ] && tests+=(tests/test_losses.py tests/test_checkpoint.py)
JAX_PLATFORMS=cuda timeout "$([ "${GPU_CHECK_FULL:-0}" = 1 ] && echo 300 || echo 25)" \
  python3 -m pytest -q -x -p no:cacheprovider -o addopts="" "${tests[@]}" \
  > "$OUT/pytest_gpu.log" 2>&1; tail -n 5 "$OUT/pytest_gpu.log" || status=1

if [ "${GPU_CHECK_FULL:-0}" = 1 ]; then
  stage "benchmarks: MobileNet v1 224, BERT-base seq 128, WRN-28-10"
  timeout 240 python3 -m experiments.bench --only mobilenet_v1 --only bert --only wrn28_10 \
    --max-time 15 --out "$OUT/bench_models.json" 2>&1 | grep -v cuda_timer | tail -n 20 || status=1
fi

stage "done (status $status)"
exit $status
