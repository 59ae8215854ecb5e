#!/usr/bin/env bash
# Build, test and benchmark the CUDA wheel on a Linux machine with an NVIDIA GPU
# and no network (the lent H100/H200 machines), from what
# scripts/device/pack_cuda.sh packed into .device/ and .whl/. The machine's own
# Python serves the tests (numpy, pytest, hypothesis, transformers are there);
# only our wheels and mlx-lm are installed, into folders on PYTHONPATH.
# Usage: scripts/device/cuda_on_device.sh STAGE... [--archs 90a-real] [--nvtx-from-toolkit]
# Stages, run in the order given:
#   build     our CUDA wheel into wheels/ (about 6 minutes with 16 cores)
#   baseline  the unpatched tree's CUDA wheel, same pin and options, into build/device-baseline/
#   test      tests/wheel on the GPU (all but test_install.py, which needs PyPI), or
#             the files in TEST_FILES; TEST_WORKERS > 1 runs them in that many
#             pytest-xdist processes (each compiles its own run-time kernels)
#   suite-ours, suite-baseline
#             upstream's python/tests on the GPU against one wheel, in parallel chunks
#             (SUITE_WORKERS processes, default 6; they may run at once), merged
#             into suite-ours.xml or suite-baseline.xml; SUITE_ONLY or SUITE_EXCLUDE
#             (comma-separated test files or test ids, FILE::CLASS::TEST) pick the
#             tests, SUITE_FIRST starts some ahead of the rest. A run resumes an earlier
#             call's of the same wheel: .device/suite/suite-WHICH.xml and .wheel (its
#             tests are not run again) and .device/suite/ptx-WHICH.tar.xz.* (the kernels
#             it compiled)
#   suites    both at once, SUITE_WORKERS (default 7) each, or SUITE_WORKERS_OURS and
#             SUITE_WORKERS_BASELINE; with two GPUs or more, each suite on a GPU of its own
#   save-suites
#             both suites' compiled kernels, split in 15 MB parts, to $OUT/suite/,
#             for the next call to resume from (with the two XML files)
#   compare   the two suite results: no new failures, the shared ones listed; each new
#             failure runs again alone RECHECK_RUNS times (12) with both wheels, and one
#             that fails unpatched too is listed as flaky in both
#   bench     mlxr.py bench --backend cuda (MLX cases; PyTorch's baselines and copy);
#             BENCH_CASES and BENCH_SHAPES narrow it
#   bench-decode
#             mlxr.py bench --backend cuda --cases decode (per-call cost in chains)
#   bench-models
#             mlxr.py bench --backend cuda --cases models: the 8 real-shape presets,
#             stock against mlxr.fuse (about 5 minutes on an H200); the chart, where
#             matplotlib is missing, later: models_report chart (docs/benchmarks.md)
#   save, save-baseline
#             our wheel, or the baseline's, split in 15 MB parts, to $OUT/wheel/ or
#             $OUT/baseline/ for a later call, which takes it from .device/wheel/ or
#             .device/baseline/ (the file name is in `name` there)
# Logs and tables go to $OUT (the device tool's output folder) or build/device.
set -euo pipefail
trap 'echo "cuda_on_device.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/../.."
archs=90a-real
nvtx=()
stages=()
while (($#)); do
  case $1 in
    --archs) archs=$2; shift 2 ;;
    --nvtx-from-toolkit) nvtx=(--nvtx-from-toolkit); shift ;;
    build | baseline | test | suite-ours | suite-baseline | suites | save-suites | compare | bench | bench-decode | bench-models | save | save-baseline)
      stages+=("$1")
      shift
      ;;
    *) echo "cuda_on_device.sh: unknown stage or option: $1" >&2; exit 2 ;;
  esac
done
out=${OUT:-build/device}
mkdir -p "$out"
out=$(realpath "$out")
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.whl" PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

machine() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 --version
  nvcc --version | tail -1
  g++ --version | head -1
  cmake --version | head -1
}

tree() { # unpack .device/NAME.tar.xz once, outside .device/: a call that carries
  # .device/ replaces the machine's copy, and with it a build in progress there
  local dir=build/device-trees/$1
  if [[ ! -f $dir/CMakeLists.txt ]]; then
    mkdir -p "$dir"
    tar -xJf ".device/$1.tar.xz" -C "$dir"
  fi
  echo "$dir"
}

build() { # TREE WHEEL_DIR [BUILD OPTIONS]
  local src=$1 dir=$2
  shift 2
  python3 scripts/mlxr.py build --backend cuda --cuda-archs "$archs" --source "$src" \
    --deps-from .device/deps --wheel-dir "$dir" "${nvtx[@]}" "$@" 2>&1 |
    tee "$out/build-$(basename "$src").log" | grep -E "^mlxr|error|FAILED" || true
  ls "$dir"/mlx-*.whl
}

saved() { # DIR WHEEL_DIR: a wheel an earlier call saved (`save`) and carried back in DIR
  local dir=$1 wheels=$2
  if ! ls "$wheels"/mlx-*.whl >/dev/null 2>&1 && [[ -f $dir/name ]]; then
    mkdir -p "$wheels"
    cat "$dir"/wheel.* >"$wheels/$(cat "$dir/name")"
  fi
}

ours() { # our wheel: built here, or saved by an earlier call and carried in .device/wheel/
  saved .device/wheel wheels
  ls wheels/mlx-*.whl
}

baseline_wheel() { # the same for the unpatched wheel, from .device/baseline/
  saved .device/baseline build/device-baseline
  ls build/device-baseline/mlx-*.whl
}

site() { # DIR WHEEL...: install wheels, without their needs, into DIR
  local dir=$1
  shift
  [[ -d $dir/mlx ]] || python3 -m pip install -q --no-deps --target "$dir" "$@"
  echo "$dir"
}

restore_suite() { # WHICH: an earlier call's suite results, carried in .device/suite/,
  # into build/device-suite/ unless a run on this machine left some there
  local state=build/device-suite
  mkdir -p "$state"
  if [[ ! -f $state/suite-$1.xml && -f .device/suite/suite-$1.xml ]]; then
    cp ".device/suite/suite-$1.xml" ".device/suite/suite-$1.wheel" "$state/"
  fi
}

mlx_lm_site() { # mlx-lm alone, without its needs (the machine has them), for the bench
  local dir=/tmp/site-mlx-lm
  [[ -d $dir/mlx_lm ]] || python3 -m pip install -q --no-deps --target "$dir" .whl/mlx_lm-*.whl
  echo "$dir"
}

# The files whose run-time compiled kernels take longest start first, and
# test_quantized.py's tests one to a chunk, so that none waits for another's
# compiling (20 to 45 s a kernel): two to a chunk, 7 of its 18 chunks were still
# compiling after 7 minutes on an H200.
suite_first=test_quantized.py,test_fast_sdpa.py,test_fast.py,test_compile.py,test_conv.py
suite_chunk_for=test_quantized.py=1,test_fast_sdpa.py=5
failed=""
for stage in "${stages[@]}"; do
  echo "== $stage ($(date +%T))"
  case $stage in
    build)
      machine | tee "$out/machine.txt"
      build "$(tree mlx-src)" wheels
      ;;
    baseline)
      baseline_wheel 2>/dev/null || build "$(tree mlx-pristine)" build/device-baseline --no-label
      ;;
    test)
      # A folder of its own: the suites' folder lacks mlx-lm. src/ holds the mlxr
      # package, which test_fuse.py adopts models with.
      lib=$(site /tmp/site-tests "$(ours)" .whl/mlx_lm-*.whl)
      workers=()
      if ((${TEST_WORKERS:-1} > 1)); then workers=(-n "$TEST_WORKERS"); fi
      PYTHONPATH=$lib:$PWD/src MLXR_TEST_DEVICE=gpu MLXR_WHEEL=$(ours) timeout "${TEST_TIMEOUT:-300}" \
        python3 -X faulthandler -m pytest -q -p no:cacheprovider "${workers[@]}" ${TEST_FILES:-tests/wheel} \
        --ignore=tests/wheel/test_install.py --junitxml="$out/tests.xml" \
        >"$out/tests.log" 2>&1 || failed+=" test"
      tail -15 "$out/tests.log"
      ;;
    suite-ours | suite-baseline)
      # Upstream's python/tests against one wheel, in parallel chunks (run_suite.py);
      # `compare` reads both folders. The two may run at once, in the background.
      if [[ $stage == suite-ours ]]; then
        which=ours src=$(tree mlx-src) wheel=$(ours)
      else
        which=baseline src=$(tree mlx-pristine) wheel=$(baseline_wheel)
      fi
      lib=$(site "/tmp/site-$which" "$wheel")
      # What earlier runs did stays in build/device-suite/ (kept on a machine that
      # is still warm) or comes from .device/suite/ (carried from an earlier call),
      # with the checksum of the wheel it ran: another wheel's results start over.
      state=build/device-suite
      restore_suite "$which"
      wheel_sum=$(sha256sum "$wheel" | cut -c1-16)
      if [[ -f $state/suite-$which.xml && $(cat "$state/suite-$which.wheel") != "$wheel_sum" ]]; then
        echo "suite-$which: the earlier results are another wheel's; running every test"
        rm -rf "$state/suite-$which.xml" "$state/ptx-$which" "$state/suite-recheck.tsv"
      fi
      echo "$wheel_sum" >"$state/suite-$which.wheel"
      if [[ ! -d $state/ptx-$which ]]; then
        mkdir -p "$state/ptx-$which"
        if compgen -G ".device/suite/ptx-$which.tar.xz.*" >/dev/null; then
          cat .device/suite/ptx-"$which".tar.xz.* | tar -xJ -C "$state/ptx-$which"
        fi
      fi
      PYTHONPATH=$lib python3 scripts/device/run_suite.py "$src/python/tests" \
        --pool "$state/ptx-$which" --resume "$state/suite-$which.xml" \
        --junit "$state/suite-$which.xml" --log "$out/suite-$which-tests.log" --tag "$which" \
        --workers "${SUITE_WORKERS:-6}" --deadline "${SUITE_TIMEOUT:-540}" \
        --first "${SUITE_FIRST:-$suite_first}" --chunk-for "${SUITE_CHUNK_FOR:-$suite_chunk_for}" \
        --only "${SUITE_ONLY:-}" --exclude "${SUITE_EXCLUDE:-}" \
        >"$out/suite-$which.log" 2>&1 || true
      cp "$state/suite-$which.xml" "$state/suite-$which.wheel" "$out/" || true
      tail -2 "$out/suite-$which.log"
      ;;
    suites)
      # Both suites at once: SUITE_WORKERS is per suite, SUITE_WORKERS_OURS and
      # SUITE_WORKERS_BASELINE split the cores unevenly (one suite nearly done).
      gpus=$(nvidia-smi --list-gpus | wc -l)
      second=$((gpus > 1 ? 1 : 0))
      SUITE_WORKERS=${SUITE_WORKERS_BASELINE:-${SUITE_WORKERS:-7}} CUDA_VISIBLE_DEVICES=$second \
        bash scripts/device/cuda_on_device.sh suite-baseline "${nvtx[@]}" &
      SUITE_WORKERS=${SUITE_WORKERS_OURS:-${SUITE_WORKERS:-7}} CUDA_VISIBLE_DEVICES=0 \
        bash scripts/device/cuda_on_device.sh suite-ours "${nvtx[@]}"
      wait
      ;;
    save-suites)
      mkdir -p "$out/suite"
      for which in ours baseline; do
        [[ -d build/device-suite/ptx-$which ]] || continue
        tar -C "build/device-suite/ptx-$which" -c . | xz -T0 -6 |
          split -b 15M -d - "$out/suite/ptx-$which.tar.xz."
        du -ch "$out/suite/ptx-$which".tar.xz.* | tail -1
      done
      ;;
    compare)
      restore_suite ours
      restore_suite baseline
      suites_=(build/device-suite/suite-ours.xml build/device-suite/suite-baseline.xml)
      if ! python3 scripts/device/compare_suites.py "${suites_[@]}" >/dev/null &&
        [[ ${RECHECK_RUNS:-12} -gt 0 ]]; then
        # Run each new failure again, alone, against both wheels: flaky in both, or ours.
        ours_tests=$(tree mlx-src)/python/tests ours_site=$(site /tmp/site-ours "$(ours)")
        baseline_tests=$(tree mlx-pristine)/python/tests
        baseline_site=$(site /tmp/site-baseline "$(baseline_wheel)")
        python3 scripts/device/recheck_suite.py "${suites_[@]}" --runs "${RECHECK_RUNS:-12}" \
          --ours-tests "$ours_tests" --ours-site "$ours_site" \
          --baseline-tests "$baseline_tests" --baseline-site "$baseline_site" \
          --out build/device-suite/suite-recheck.tsv
        cp build/device-suite/suite-recheck.tsv "$out/"
      fi
      recheck=()
      [[ -f build/device-suite/suite-recheck.tsv ]] && recheck=(--recheck build/device-suite/suite-recheck.tsv)
      python3 scripts/device/compare_suites.py "${suites_[@]}" "${recheck[@]}" \
        --out "$out/suite.md" || failed+=" suite"
      ;;
    bench)
      timeout "${BENCH_TIMEOUT:-420}" python3 scripts/mlxr.py bench --backend cuda --wheel "$(ours)" \
        --repeats 15 --cases "${BENCH_CASES:-forward,backward,train}" \
        --shapes "${BENCH_SHAPES:-16384x8192,32768x4096,32x4096,1x4096}" --dtypes bfloat16,float32 \
        2>&1 | tee "$out/bench.log" || failed+=" bench"
      cp build/results/bench-gpu.md "$out/" || true
      ;;
    bench-decode | bench-models)
      # mlx-lm on PYTHONPATH, as for the tests: the models case imports it, and
      # `bench` installs nothing where it imports.
      case_=${stage#bench-}
      PYTHONPATH=$(mlx_lm_site) timeout "${BENCH_TIMEOUT:-540}" python3 scripts/mlxr.py bench \
        --backend cuda --wheel "$(ours)" --cases "$case_" 2>&1 | tee "$out/$stage.log" ||
        failed+=" $stage"
      cp build/results/bench-gpu.md "$out/$stage.md" || true
      cp build/results/bench-models-gpu.* "$out/" 2>/dev/null || true
      ;;
    save | save-baseline)
      if [[ $stage == save ]]; then dir=$out/wheel w=$(ours); else dir=$out/baseline w=$(baseline_wheel); fi
      mkdir -p "$dir"
      basename "$w" >"$dir/name"
      split -b 15M -d "$w" "$dir/wheel."
      ;;
  esac
done
if [[ -n $failed ]]; then
  echo "failed:$failed"
  exit 1
fi
