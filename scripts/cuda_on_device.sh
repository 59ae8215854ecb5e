#!/usr/bin/env bash
# Build, test and benchmark the CUDA wheel on a Linux machine with an NVIDIA GPU
# and no network (the lent H100/H200 machines). It expects, in the repo root:
#   .device/mlx-src  the applied tree: git -C build/mlx-src archive HEAD | tar -x -C .device/mlx-src
#   .whl/            wheels for that machine's Python: pip, setuptools, wheel,
#                    typing_extensions, nanobind, cuda-cccl, nvidia-cudnn-frontend,
#                    nvidia-cutlass, pytest and hypothesis with their needs
#   .device/wheel/   optional: a wheel built by an earlier call, in parts (see `save`),
#                    used instead of building
# Usage: scripts/cuda_on_device.sh STAGE... [--archs 90a-real]
# Stages, run in the order given:
#   build   the CUDA wheel (about 6 minutes with 16 cores)
#   save    the wheel, split in 15 MB parts, to $OUT/wheel.* for the next call
#   sweep   time the forward kernel at other launch geometries (cuda_kernel_sweep.cu)
#   test    the wheel tests on the GPU; on a crash, a native backtrace from cuda-gdb
#   bench   mlxr.py bench --backend cuda (MLX cases; PyTorch's baselines and copy)
# Logs and tables go to $OUT (the device tool's output folder) or build/device.
set -euo pipefail
trap 'echo "cuda_on_device.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
archs=90a-real
stages=()
while (($#)); do
  case $1 in
    --archs) archs=$2; shift 2 ;;
    build | save | sweep | test | bench) stages+=("$1"); shift ;;
    *) echo "unknown stage or option: $1" >&2; exit 2 ;;
  esac
done
out=${OUT:-build/device}
mkdir -p "$out"
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.whl" PYTHONUNBUFFERED=1
site=/tmp/mlxr-site

machine() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 --version
  nvcc --version | tail -1
  g++ --version | head -1
}

wheel() {
  if ! ls wheels/mlx-*.whl >/dev/null 2>&1 && ls .device/wheel/wheel.* >/dev/null 2>&1; then
    mkdir -p wheels
    cat .device/wheel/wheel.* >"wheels/$(cat .device/wheel/name)"
  fi
  ls wheels/mlx-*.whl
}

install_site() {
  [[ -d $site/mlx ]] && return
  pip_whl=$(ls .whl/pip-*.whl | tail -1)
  # --no-deps: the machine's own numpy and the like serve.
  python3 "$pip_whl/pip" install -q --no-deps --target "$site" "$(wheel)" \
    pytest pluggy iniconfig packaging hypothesis attrs sortedcontainers
}

run_tests() {
  PYTHONPATH="$site" MLXR_TEST_DEVICE=gpu MLXR_WHEEL="$(wheel)" timeout "${TEST_TIMEOUT:-240}" \
    "$@" -m pytest -q -p no:cacheprovider -m "not vendor" tests/wheel ${PYTEST_ARGS:-}
}

failed=""
for stage in "${stages[@]}"; do
  echo "== $stage ($(date +%T))"
  case $stage in
    build)
      machine | tee "$out/machine.txt"
      python3 scripts/mlxr.py build --backend cuda --cuda-archs "$archs" --source .device/mlx-src \
        2>&1 | tee "$out/build.log" | grep -E "mlxr|error|FAILED" || true
      wheel
      ;;
    save)
      w=$(wheel)
      basename "$w" >"$out/name"
      split -b 15M -d "$w" "$out/wheel."
      ;;
    sweep)
      cccl=$(find build/venv /tmp/cccl -path '*cuda/cccl/headers/include' -type d 2>/dev/null | head -1 || true)
      if [[ -z $cccl ]]; then
        python3 -m zipfile -e .whl/cuda_cccl-*.whl /tmp/cccl
        cccl=$(find /tmp/cccl -path '*cuda/cccl/headers/include' -type d | head -1)
      fi
      nvcc -std=c++20 -O3 -arch=sm_90a -ccbin /usr/bin/g++ --expt-relaxed-constexpr \
        --extended-lambda -DFMT_CONSTEVAL= -diag-suppress 997,20012,20208 \
        -I .device/mlx-src -I "$cccl" scripts/cuda_kernel_sweep.cu -o /tmp/sweep || failed+=" sweep"
      [[ -x /tmp/sweep ]] && /tmp/sweep 16384x8192 32768x4096 4096x4096 | tee "$out/sweep.md"
      ;;
    test)
      install_site
      run_tests python3 -X faulthandler >"$out/tests.log" 2>&1 || failed+=" test"
      tail -30 "$out/tests.log"
      if grep -q "Fatal Python error" "$out/tests.log"; then
        echo "== a crash: the same run under cuda-gdb"
        run_tests cuda-gdb -q -batch -ex "set pagination off" -ex run -ex bt \
          -ex "thread apply all bt 12" --args python3 >"$out/gdb.log" 2>&1 || true
        grep -A40 "SIGSEGV\|SIGABRT" "$out/gdb.log" | head -80 || true
      fi
      ;;
    bench)
      timeout "${BENCH_TIMEOUT:-300}" python3 scripts/mlxr.py bench --backend cuda --wheel "$(wheel)" --repeats 15 \
        --shapes 16384x8192,32768x4096,32x4096,1x4096 --dtypes bfloat16,float32 \
        2>&1 | tee "$out/bench.log" || failed+=" bench"
      cp build/results/bench-gpu.md "$out/" || true
      ;;
  esac
done
if [[ -n $failed ]]; then
  echo "failed:$failed"
  exit 1
fi
