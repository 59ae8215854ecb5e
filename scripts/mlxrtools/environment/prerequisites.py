"""Prerequisites of an offline build: find them, or say how to install them."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..progress import say


@dataclass(frozen=True)
class Requirement:
    what: str
    debian_package: str
    brew_formula: str | None
    found: bool
    optional: bool = False


def _include_dirs() -> list[Path]:
    dirs = [Path("/usr/include"), Path("/usr/local/include"), Path("/opt/homebrew/include")]
    try:
        arch = subprocess.run(
            ["gcc", "-print-multiarch"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except FileNotFoundError:
        arch = ""
    if arch:
        dirs.append(Path("/usr/include") / arch)
    return dirs


def find_header(name: str) -> Path | None:
    for d in _include_dirs():
        if (d / name).is_file():
            return d / name
    return None


def requirements(with_ccache: bool = True) -> list[Requirement]:
    on_mac = platform.system() == "Darwin"
    reqs = [
        Requirement("a C++20 compiler (g++)", "g++", None, shutil.which("c++") is not None),
        Requirement("git", "git", "git", shutil.which("git") is not None),
    ]
    if not on_mac:
        # macOS uses Accelerate for BLAS and LAPACK.
        reqs += [
            Requirement(
                "OpenBLAS (cblas.h)", "libopenblas-dev", None, find_header("cblas.h") is not None
            ),
            Requirement(
                "LAPACKE (lapacke.h)", "liblapacke-dev", None, find_header("lapacke.h") is not None
            ),
            Requirement("Python headers (Python.h)", "python3-dev", None, _python_headers_found()),
        ]
    if with_ccache:
        reqs.append(
            Requirement("ccache", "ccache", "ccache", shutil.which("ccache") is not None, True)
        )
    return reqs


def _python_headers_found() -> bool:
    import sysconfig

    return (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()


def ensure_requirements() -> None:
    """Install missing packages where we can (root on Debian), else explain how."""
    missing = [r for r in requirements() if not r.found]
    if not missing:
        return
    can_apt = (
        platform.system() == "Linux"
        and shutil.which("apt-get") is not None
        and hasattr(os, "geteuid")
        and os.geteuid() == 0
    )
    required = [r for r in missing if not r.optional]
    if can_apt and required:
        names = sorted({r.debian_package for r in missing})
        say(f"installing {' '.join(names)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *names]):
            if subprocess.run(cmd, env=env).returncode != 0:
                say(f"`{' '.join(cmd)}` failed")
                break
        missing = [r for r in requirements() if not r.found]
    for r in [r for r in missing if r.optional]:
        say(f"{r.what} not found; building without it (slower rebuilds)")
    missing = [r for r in missing if not r.optional]
    if not missing:
        return
    lines = [f"  - {r.what}" for r in missing]
    if platform.system() == "Darwin":
        formulas = " ".join(sorted({r.brew_formula for r in missing if r.brew_formula}))
        how = f"brew install {formulas}" if formulas else "install the Xcode command line tools"
    else:
        how = "sudo apt-get install " + " ".join(sorted({r.debian_package for r in missing}))
    raise UserError(
        "missing prerequisites:\n" + "\n".join(lines) + f"\ninstall them with:\n  {how}"
    )
