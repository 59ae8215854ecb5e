"""What the CUDA backend needs beyond upstream's pinned sources: nvcc, cuDNN's
libraries, and NVTX where its pinned release cannot be had."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..errors import UserError


def toolkit_nvtx(nvtx: Path) -> Path:
    """A stand-in for NVTX's project that uses the CUDA toolkit's NVTX headers.

    Only on request (`--nvtx-from-toolkit`): the toolkit's copy is not NVTX's
    pinned release, so it serves only where that release cannot be had."""
    _write(
        nvtx / "c" / "CMakeLists.txt",
        "# Stands in for NVTX's project: the CUDA toolkit's NVTX headers.\n"
        "find_package(CUDAToolkit REQUIRED)\n"
        "add_library(nvtx3-c INTERFACE)\n"
        "target_include_directories(nvtx3-c INTERFACE ${CUDAToolkit_INCLUDE_DIRS})\n"
        "target_link_libraries(nvtx3-c INTERFACE ${CMAKE_DL_LIBS})\n"
        "add_library(nvtx3-cpp INTERFACE)\n"
        "target_link_libraries(nvtx3-cpp INTERFACE nvtx3-c)\n",
    )
    return nvtx


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def nvcc() -> str:
    found = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    )
    if not found:
        raise UserError("the CUDA backend needs nvcc", fix="put the CUDA toolkit on PATH")
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


def cuda_cmake_args(archs: str) -> list[str]:
    host = shutil.which("g++")
    args = [
        "-DMLX_BUILD_CUDA=ON",
        f"-DMLX_CUDA_ARCHITECTURES={archs}",
        f"-DCMAKE_CUDA_COMPILER={nvcc()}",
        # Loaded by upstream only through GNUInstallDirs, after it is needed.
        "-DCMAKE_INSTALL_INCLUDEDIR=include",
        *cudnn_paths(),
    ]
    if host:
        args.append(f"-DCMAKE_CUDA_HOST_COMPILER={host}")
    return args
