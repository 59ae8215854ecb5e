"""Checks of a built mlx wheel that a passing build does not prove."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import UserError
from ..progress import say
from . import pinned_deps


def check_shared_libstdcxx(wheel: Path) -> None:
    """Fail where libmlx carries its own libstdc++. Its exported copy mixes with
    the shared one that Python's other modules load, and locale facets then
    resolve across the two copies: formatting a number in an error message
    crashed so on the lent CUDA machines."""
    readelf = shutil.which("readelf")
    if readelf is None or sys.platform != "linux":
        return
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as whl:
        lib = Path(whl.extract("mlx/lib/libmlx.so", tmp))
        dynamic = subprocess.run(
            [readelf, "-d", str(lib)], capture_output=True, text=True, check=True
        ).stdout
    if "libstdc++.so" not in dynamic:
        raise UserError(
            f"{wheel.name}: libmlx.so links libstdc++ statically, which crashes once a "
            "process loads the shared libstdc++ too",
            fix="look for -static-libstdc++ in the compiler flags, and for a compiler whose "
            "library folders hold only libstdc++.a (CMake links -lstdc++ from the first "
            "folder that has one)",
        )


# The dependency headers a CUDA wheel ships for MLX's run-time compiler.
_BUNDLED_HEADERS = {
    "cccl": "mlx/include/cccl/cuda/std/__cccl/version.h",
    "cutlass": "mlx/include/cutlass/version.h",
}


def bundled_versions(wheel: Path) -> dict[str, str]:
    """The versions of the headers the wheel bundles, read from the headers."""
    found = {}
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        for name, rel in _BUNDLED_HEADERS.items():
            if rel in names:
                version = pinned_deps.parse_version(name, whl.read(rel).decode(errors="replace"))
                if version:
                    found[name] = version
    return found


def check_bundled_versions(wheel: Path, tree: Path) -> None:
    """Fail where the wheel bundles other versions of its JIT headers than the pins."""
    pins = {p.name: p for p in pinned_deps.pins_for(tree, "cuda")}
    bundled = bundled_versions(wheel)
    for name in _BUNDLED_HEADERS:
        wanted = pinned_deps.pinned_version(pins[name])
        if bundled.get(name) != wanted:
            raise UserError(
                f"{wheel.name} bundles {name} {bundled.get(name, '(none)')} for MLX's run-time "
                f"compiler, but upstream pins {pins[name].ref}"
            )
    versions = ", ".join(f"{n} {v}" for n, v in sorted(bundled.items()))
    say(f"bundled {versions} (upstream's pins)")
