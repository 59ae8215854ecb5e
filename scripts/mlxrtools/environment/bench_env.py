"""The `bench` verb: run the benchmark in a venv that has the current wheel."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

from ..layout import Layout
from .build import build, make_venv, venv_python
from .testing import fresh_venv
from .venv import install_wheel, installed


def inherit_packages(python: Path) -> None:
    """Let the venv see the packages of the interpreter running this, also where
    that interpreter is itself a venv's (as PyTorch's often is), which
    --system-site-packages alone does not reach."""
    if sys.prefix == sys.base_prefix:
        return
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    paths = "\n".join(site.getsitepackages())
    (Path(purelib) / "mlxr-parent-packages.pth").write_text(paths + "\n")


def bench_python(layout: Layout, backend: str, wheel: Path | None) -> Path:
    """A venv with the wheel installed. For CUDA it sees the system's packages,
    so that the machine's own PyTorch serves as the baseline."""
    wheel = wheel or build(layout, backend=backend)
    if backend == "cuda":
        venv = layout.build / "bench-venv-cuda"
        python = venv_python(venv)
        if not python.exists():
            make_venv(venv, system_site_packages=True)
            inherit_packages(python)
        if "numpy" not in installed(python):
            subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy"], check=True)
    else:
        python = venv_python(layout.test_venv)
        if not python.exists() or "numpy" not in installed(python):
            python = fresh_venv(layout.test_venv)
    install_wheel(python, wheel)
    return python


def run_bench(
    layout: Layout,
    device: str,
    backend: str = "auto",
    wheel: Path | None = None,
    case_args: list[str] | None = None,
    sweep: bool = False,
) -> int:
    """Run the payload on `device` with the case options `case_args` (as
    benchmark.case_argv writes them); `sweep` also needs matplotlib."""
    python = bench_python(layout, backend, wheel)
    if sweep and "matplotlib" not in installed(python):
        subprocess.run([str(python), "-m", "pip", "install", "-q", "matplotlib"], check=True)
    env = {**os.environ, "PYTHONPATH": str(layout.root / "scripts")}
    cmd = [
        str(python), "-m", "mlxrtools.payloads.benchmark", "--device", device,
        "--out-dir", str(layout.results), *(case_args or []),
    ]  # fmt: skip
    code = subprocess.run(cmd, env=env).returncode
    if code == 0:
        print(f"mlxr bench: results in {layout.results.relative_to(layout.root)}/bench-{device}.*")
    return code
