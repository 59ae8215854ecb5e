"""nvcc's PTX for the overlay's CUDA kernels, made here without a GPU, and what
the checks read in it.

The kernels' file is compiled as the wheel's build compiles it for the H100 and
H200 (sm_90a), with the headers of upstream's pinned CCCL, cudnn-frontend and
fmt; NVTX's come with the toolkit, as in `build --nvtx-from-toolkit`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mlxrtools.environment import cuda_deps, pinned_deps
from mlxrtools.errors import UserError

SOURCE = "mlx/backend/cuda/rms_norm_fused.cu"
ARCH = "sm_90a"
HEADER_PINS = ("cccl", "cudnn", "fmt")

_ENTRY = re.compile(r"^(?:\.visible |\.weak )?\.entry (\w+)\(", re.M)
# A float32 value multiplied by itself in its own instruction, not in an FMA.
_SQUARE = re.compile(r"^\s*mul(?:\.rn)?\.f32\s+%f\d+, (%f\d+), \1;", re.M)


def nvcc() -> str | None:
    """The build's nvcc, or None where there is none."""
    try:
        return cuda_deps.nvcc()
    except UserError:
        return None


def compile_ptx(tree: Path, source: Path, out: Path) -> str:
    pins = {pin.name: pin for pin in pinned_deps.pins_for(tree, "cuda")}
    includes = [f"-I{pinned_deps.prepare(pins[name]) / 'include'}" for name in HEADER_PINS]
    command = [
        str(nvcc()), "-std=c++20", f"-arch={ARCH}", "--expt-relaxed-constexpr",
        "--extended-lambda", "-DMLX_USE_CUDA", "-w", f"-I{tree}", *includes,
        "-ptx", str(source), "-o", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stderr[-4000:]}"
    return out.read_text()


def kernels(ptx: str) -> dict[str, str]:
    """Each kernel's body by its mangled name."""
    starts = list(_ENTRY.finditer(ptx))
    ends = [m.start() for m in starts[1:]] + [len(ptx)]
    return {m.group(1): ptx[m.start() : end] for m, end in zip(starts, ends, strict=True)}


def forward_kernels(ptx: str) -> dict[str, str]:
    return {
        name: body
        for name, body in kernels(ptx).items()
        if "rms_norm_fused" in name and "rms_norm_fused_vjp" not in name
    }


def squares_outside_fma(body: str) -> int:
    return len(_SQUARE.findall(body))
