#!/usr/bin/env bash
# Pack, on a machine with mirrors or a network, what cuda_on_device.sh needs on a
# lent GPU machine that has neither. Writes (both ignored by git):
#   .device/mlx-src.tar.xz       the applied tree (build/mlx-src at HEAD)
#   .device/mlx-pristine.tar.xz  the unpatched tree at the pin, for the baseline build
#   .device/deps/                upstream's pinned dependencies (`mlxr.py deps --pack`)
#   .whl/                        the wheels that machine lacks: the build venv's
#                                pip, setuptools, wheel, typing_extensions, packaging;
#                                mlx-lm
# Wheels saved by earlier GPU calls (.device/wheel/, .device/baseline/) are kept.
# Usage: scripts/device/pack_cuda.sh [--nvtx-from-toolkit] [--python-version 3.12]
set -euo pipefail
cd "$(dirname "$0")/../.."
nvtx=()
py=3.12
while (($#)); do
  case $1 in
    --nvtx-from-toolkit) nvtx=(--nvtx-from-toolkit); shift ;;
    --python-version) py=$2; shift 2 ;;
    *) echo "pack_cuda.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done

python3 scripts/mlxr.py apply
rm -rf .device/deps .device/*.tar.xz
mkdir -p .device
echo "pack_cuda.sh: trees"
git -C build/mlx-src archive --format=tar HEAD | xz -T0 -6 >.device/mlx-src.tar.xz
pin=$(git ls-files -s mlx_upstream | cut -d' ' -f2)
git -C mlx_upstream archive --format=tar "$pin" | xz -T0 -6 >.device/mlx-pristine.tar.xz
echo "pack_cuda.sh: pinned dependencies"
python3 scripts/mlxr.py deps --backend cuda --pack .device/deps "${nvtx[@]}"
echo "pack_cuda.sh: wheels for Python $py"
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pip "setuptools>=80" wheel typing_extensions "packaging>=24" "mlx-lm==0.32.2"
du -sh .device .whl
