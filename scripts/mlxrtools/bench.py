"""The `bench` verb: run the benchmark in a venv that has the current wheel."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .build import build, venv_python
from .install import install_wheel, installed
from .layout import Layout
from .testing import fresh_venv


def bench_python(layout: Layout) -> Path:
    """The test venv, with the current wheel installed (made fresh if missing)."""
    wheel = build(layout)
    python = venv_python(layout.test_venv)
    if not python.exists() or "numpy" not in installed(python):
        python = fresh_venv(layout.test_venv)
    install_wheel(python, wheel)
    return python


def run_bench(layout: Layout, device: str, repeats: int, extra: list[str] | None = None) -> int:
    python = bench_python(layout)
    if "--sweep" in (extra or []) and "matplotlib" not in installed(python):
        subprocess.run([str(python), "-m", "pip", "install", "-q", "matplotlib"], check=True)
    env = {**os.environ, "PYTHONPATH": str(layout.root / "scripts")}
    cmd = [
        str(python), "-m", "mlxrtools.benchmark", "--device", device, "--repeats", str(repeats),
        "--out-dir", str(layout.results), *(extra or []),
    ]  # fmt: skip
    code = subprocess.run(cmd, env=env).returncode
    if code == 0:
        print(f"mlxr bench: results in {layout.results.relative_to(layout.root)}/bench-{device}.*")
    return code
