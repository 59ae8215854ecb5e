#!/usr/bin/env bash
# Build, test and benchmark the CUDA wheel on a Linux machine with an NVIDIA GPU
# and no network (the lent H100/H200 machines). It expects, in the repo root:
#   .device/mlx-src  the applied tree: git -C build/mlx-src archive HEAD | tar -x -C .device/mlx-src
#   .whl/            wheels for that machine's Python: pip, setuptools, wheel,
#                    typing_extensions, nanobind, cuda-cccl, nvidia-cudnn-frontend,
#                    nvidia-cutlass, pytest and hypothesis with their needs
# Usage: scripts/cuda_on_device.sh [build|test|bench|all] [CUDA archs, default 90a-real]
# Logs and tables go to $OUT (the device tool's output folder) or build/device.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
archs=${2:-90a-real}
out=${OUT:-build/device}
mkdir -p "$out"
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.whl" PYTHONUNBUFFERED=1
site=/tmp/mlxr-site

if [[ $stage == build || $stage == all ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/machine.txt"
  { python3 --version; nvcc --version | tail -1; g++ --version | head -1; cmake --version | head -1; } \
    | tee -a "$out/machine.txt"
  python3 scripts/mlxr.py build --backend cuda --cuda-archs "$archs" --source .device/mlx-src \
    2>&1 | tee "$out/build.log" | grep -E "mlxr|error|FAILED" || true
  cp build/logs/build-mlx-src.log "$out/build-full.log" 2>/dev/null || true
  ls wheels/mlx-*.whl
fi

if [[ $stage == test || $stage == all ]]; then
  pip_whl=$(ls .whl/pip-*.whl | tail -1)
  rm -rf "$site"
  # --no-deps: the machine's own numpy, pygments and the like serve.
  python3 "$pip_whl/pip" install -q --no-deps --target "$site" wheels/mlx-*.whl \
    pytest pluggy iniconfig packaging hypothesis attrs sortedcontainers
  PYTHONPATH="$site" MLXR_TEST_DEVICE=gpu MLXR_WHEEL="$(ls wheels/mlx-*.whl)" \
    timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider -m "not vendor" tests/wheel $PYTEST_ARGS \
    2>&1 | tee "$out/tests.log" | tail -25
fi

if [[ $stage == bench || $stage == all ]]; then
  shapes=16384x8192,32768x4096,32x4096,1x4096
  MLXR_BENCH_TORCH=0 PYTHONPATH="$site:$PWD/scripts" timeout 150 python3 -m mlxrtools.benchmark --device gpu \
    --repeats 15 --shapes $shapes --dtypes bfloat16,float32 --out-dir "$out" 2>&1 | tee "$out/bench.log"
  # PyTorch in a process of its own: with MLX's CUDA libraries in one process it crashed.
  PYTHONPATH="$PWD/scripts" timeout 150 python3 -m mlxrtools.torch_baselines --repeats 15 --shapes $shapes \
    --dtypes bfloat16,float32 2>&1 | tee "$out/torch.log"
fi
