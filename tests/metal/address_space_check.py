"""A syntax check of a .metal source in which Metal's address spaces are distinct.

The emulation harness compiles the kernels with `device`, `threadgroup` and
`constant` defined away, so a pointer passed from one address space to another
compiles there, though Apple's compiler rejects it. Here libclang parses the
source with each of them as a clang `address_space` attribute (unqualified
values are thread memory, as in Metal), with declarations of the Metal
builtins the kernels use (address_spaces/), and instantiates every kernel as
MLX's instantiate_kernel does, so that the body of each instance is checked.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KERNEL = ROOT / "overlay" / "mlx" / "backend" / "metal" / "kernels" / "rms_norm_fused.metal"


@cache
def system_includes() -> tuple[str, ...]:
    """The C++ standard library's include folders, as the system's g++ has them."""
    proc = subprocess.run(
        ["g++", "-E", "-x", "c++", "-", "-v"], input="", capture_output=True, text=True
    )
    listing = proc.stderr.split("#include <...> search starts here:")[1]
    return tuple(listing.split("End of search list.")[0].split())


def address_space_errors(source: str) -> list[str]:
    """The errors libclang finds in `source`: "line: message", one each."""
    import clang.cindex as ci

    # Threadgroup arrays are locals in Metal; in C++ only static locals may
    # live in another address space.
    source = re.sub(
        r"\bthreadgroup\s+(\w+)\s+(\w+)\[([^\]]+)\];", r"static threadgroup \1 \2[\3];", source
    )
    args = [
        "-x", "c++", "-std=c++17", f"-I{HERE / 'address_spaces'}", f"-I{ROOT / 'mlx_upstream'}",
        "-Wno-unknown-attributes", "-Wno-ignored-attributes",
        *(f"-isystem{path}" for path in system_includes()),
    ]  # fmt: skip
    name = "kernel.metal.cpp"
    unit = ci.Index.create().parse(name, args=args, unsaved_files=[(name, source)])
    return [
        f"{d.location.line}: {d.spelling}"
        for d in unit.diagnostics
        if d.severity >= ci.Diagnostic.Error
    ]
