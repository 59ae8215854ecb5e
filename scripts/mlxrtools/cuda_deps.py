"""Local sources for the CUDA backend's FetchContent dependencies.

Upstream's CUDA CMake downloads CCCL, NVTX, cudnn-frontend and CUTLASS from
GitHub. Their headers come from PyPI packages installed in the build venv
instead, NVTX from the CUDA toolkit, and the two that upstream links as CMake
targets get a small interface target of the same name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .layout import Layout

# Header packages pinned to the releases nearest to upstream's own pins
# (CCCL 3.1.3, cudnn-frontend 1.16.0, CUTLASS 4.4.2 for MLX v0.32.1).
HEADER_PACKAGES = ("cuda-cccl==0.3.4", "nvidia-cudnn-frontend==1.16.0", "nvidia-cutlass==4.2.0.0")

_FIND_FILES = """
import json, sys, importlib.metadata as md
found = {}
for dist, suffix in json.loads(sys.argv[1]):
    for f in md.distribution(dist).files or []:
        if str(f).endswith(suffix):
            found[suffix] = str(f.locate())
            break
print(json.dumps(found))
"""


def _locate(python: Path, wanted: list[tuple[str, str]]) -> dict[str, Path]:
    out = subprocess.run(
        [str(python), "-c", _FIND_FILES, json.dumps(wanted)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = {k: Path(v) for k, v in json.loads(out).items()}
    missing = [suffix for _, suffix in wanted if suffix not in found]
    if missing:
        raise RuntimeError(f"CUDA header packages lack {', '.join(missing)}")
    return found


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def nvcc() -> str:
    found = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    )
    if not found:
        raise RuntimeError("the CUDA backend needs nvcc (the CUDA toolkit) on PATH")
    return found


def cudnn_paths() -> list[str]:
    """cuDNN from the nvidia-cudnn-cu* package of a Python on this machine, if any."""
    probe = "import nvidia.cudnn as m; print(list(m.__path__)[0])"
    for python in ("python3", "/opt/torch/.venv/bin/python3"):
        if not shutil.which(python) and not Path(python).exists():
            continue
        proc = subprocess.run([python, "-c", probe], capture_output=True, text=True)
        root = Path(proc.stdout.strip()) if proc.returncode == 0 else None
        if root and (root / "include" / "cudnn.h").exists():
            return [
                f"-DCUDNN_INCLUDE_PATH={root / 'include'}",
                f"-DCUDNN_LIBRARY_PATH={root / 'lib'}",
            ]
    return []


def cuda_cmake_args(layout: Layout, python: Path, archs: str) -> list[str]:
    files = _locate(
        python,
        [
            ("cuda-cccl", "cuda/cccl/headers/include/cuda/std/version"),
            ("nvidia-cudnn-frontend", "include/cudnn_frontend.h"),
            ("nvidia-cutlass", "cutlass_library/source/include/cutlass/cutlass.h"),
        ],
    )
    cccl = files["cuda/cccl/headers/include/cuda/std/version"].parents[3]
    cutlass = files["cutlass_library/source/include/cutlass/cutlass.h"].parents[2]
    frontend_include = files["include/cudnn_frontend.h"].parent

    deps = layout.build / "deps"
    frontend = deps / "cudnn-frontend"
    _write(
        frontend / "CMakeLists.txt",
        "# Stands in for cudnn-frontend's own project: its headers come from PyPI.\n"
        "add_library(cudnn_frontend INTERFACE)\n"
        f'target_include_directories(cudnn_frontend INTERFACE "{frontend_include}")\n'
        "target_compile_definitions(cudnn_frontend INTERFACE CUDNN_FRONTEND_SKIP_JSON_LIB)\n",
    )
    nvtx = deps / "nvtx3"
    _write(
        nvtx / "c" / "CMakeLists.txt",
        "# Stands in for NVTX's project: the CUDA toolkit ships the same headers.\n"
        "find_package(CUDAToolkit REQUIRED)\n"
        "add_library(nvtx3-c INTERFACE)\n"
        "target_include_directories(nvtx3-c INTERFACE ${CUDAToolkit_INCLUDE_DIRS})\n"
        "target_link_libraries(nvtx3-c INTERFACE ${CMAKE_DL_LIBS})\n"
        "add_library(nvtx3-cpp INTERFACE)\n"
        "target_link_libraries(nvtx3-cpp INTERFACE nvtx3-c)\n",
    )
    host = shutil.which("g++")
    args = [
        "-DMLX_BUILD_CUDA=ON",
        f"-DMLX_CUDA_ARCHITECTURES={archs}",
        f"-DCMAKE_CUDA_COMPILER={nvcc()}",
        f"-DFETCHCONTENT_SOURCE_DIR_CCCL={cccl}",
        f"-DFETCHCONTENT_SOURCE_DIR_CUTLASS={cutlass}",
        f"-DFETCHCONTENT_SOURCE_DIR_CUDNN={frontend}",
        f"-DFETCHCONTENT_SOURCE_DIR_NVTX3={nvtx}",
        # Loaded by upstream only through GNUInstallDirs, after it is needed.
        "-DCMAKE_INSTALL_INCLUDEDIR=include",
        # fmt 9's consteval checks fail under nvcc.
        "-DCMAKE_CUDA_FLAGS=-DFMT_CONSTEVAL=",
        *cudnn_paths(),
    ]
    if host:
        args.append(f"-DCMAKE_CUDA_HOST_COMPILER={host}")
    return args
