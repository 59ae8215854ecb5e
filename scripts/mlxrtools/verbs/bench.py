"""`bench`: time rmsnorm_fused against its baselines, in a venv that has the wheel."""

from __future__ import annotations

from pathlib import Path

from ..environment.build import BuildOptions, build
from ..environment.venv import (
    fresh_venv,
    inherit_packages,
    install_missing,
    install_wheel,
    installed,
    make_venv,
    run_python,
    venv_python,
)
from ..errors import UserError
from ..layout import Layout
from ..payloads.bench_options import BenchOptions
from . import Result

PAYLOAD = "mlxrtools.payloads.benchmark"


def run(layout: Layout, backend: str, wheel: Path | None, options: BenchOptions) -> Result:
    """Run the payload with `options`, which it receives once, as JSON."""
    python = _bench_python(layout, backend, wheel)
    if options.sweep:
        install_missing(python, "matplotlib")
    env = {"PYTHONPATH": str(layout.scripts)}
    out = ["--out-dir", str(layout.results)]
    code = run_python(python, "-m", PAYLOAD, options.to_json(), *out, env=env).returncode
    if code != 0:
        return Result(code)
    where = layout.results.relative_to(layout.root)
    return Result(messages=(f"results in {where}/bench-{options.device}.*",))


def _bench_python(layout: Layout, backend: str, wheel: Path | None) -> Path:
    """A venv with the wheel installed. For CUDA it sees the system's packages,
    so that the machine's own PyTorch serves as the baseline."""
    if wheel is not None and not wheel.is_file():
        raise UserError(f"--wheel {wheel} is not a file")
    wheel = wheel or build(layout, BuildOptions(backend=backend)).wheel
    if backend == "cuda":
        python = venv_python(layout.bench_cuda_venv)
        if not python.exists():
            make_venv(layout.bench_cuda_venv, system_site_packages=True)
            inherit_packages(python)
        install_missing(python, "numpy")
    else:
        python = venv_python(layout.test_venv)
        if not python.exists() or "numpy" not in installed(python):
            python = fresh_venv(layout.test_venv)
    install_wheel(python, wheel)
    return python
