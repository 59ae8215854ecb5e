"""Every place in the MLX tree where a first-class fast primitive must appear.

Upstream's RMSNorm is the template (DESIGN.md): wherever it is registered,
RMSNormFused must be too. `check` runs these against the applied tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Site:
    path: str
    pattern: str
    why: str

    def holds(self, tree: Path) -> bool:
        f = tree / self.path
        return f.is_file() and re.search(self.pattern, f.read_text(), re.MULTILINE) is not None


SITES = (
    Site("mlx/fast.h", r"rmsnorm_fused\(", "the C++ op is declared"),
    Site("mlx/fast.cpp", r"^std::vector<array> rmsnorm_fused\(", "the op, checks and fallback"),
    Site("mlx/fast_primitives.h", r"class RMSNormFused : public Custom", "the primitive"),
    Site("mlx/export.cpp", r"SERIALIZE_PRIMITIVE\(RMSNormFused\)", "export/import"),
    Site("mlx/backend/no_gpu/primitives.cpp", r"\(RMSNormFused\)", "CPU-only builds"),
    Site("mlx/backend/cpu/CMakeLists.txt", r"rms_norm_fused\.cpp", "CPU kernel is built"),
    Site("mlx/backend/cpu/rms_norm_fused.cpp", r"RMSNormFused::eval_cpu", "CPU kernel"),
    Site("mlx/backend/metal/CMakeLists.txt", r"rms_norm_fused\.cpp", "Metal host code is built"),
    Site("mlx/backend/metal/rms_norm_fused.cpp", r"RMSNormFused::eval_gpu", "Metal host code"),
    Site(
        "mlx/backend/metal/kernels/CMakeLists.txt",
        r"^build_kernel\(rms_norm_fused\)",
        "the kernel lands in mlx.metallib (JIT and non-JIT)",
    ),
    Site("mlx/backend/metal/kernels/rms_norm_fused.metal", r"instantiate_kernel", "Metal kernel"),
    Site("mlx/backend/cuda/CMakeLists.txt", r"rms_norm_fused\.cu", "CUDA kernels are built"),
    Site("mlx/backend/cuda/rms_norm_fused.cu", r"RMSNormFused::eval_gpu", "CUDA kernels"),
    Site("python/src/fast.cpp", r'"rmsnorm_fused"', "the Python binding"),
    Site("python/tests/test_fast.py", r"rmsnorm_fused", "upstream's tests cover it"),
    Site("docs/src/python/fast.rst", r"^\s+rmsnorm_fused$", "the docs list it"),
)


def missing_sites(tree: Path, sites: tuple[Site, ...] = SITES) -> list[Site]:
    return [site for site in sites if not site.holds(tree)]
