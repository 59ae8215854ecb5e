"""`bench`: time rmsnorm_fused against its baselines, in a venv that has the wheel."""

from __future__ import annotations

import os
from pathlib import Path

from ..environment.build import BuildOptions, build
from ..environment.venv import (
    MLX_LM,
    fresh_venv,
    inherit_packages,
    install,
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
    # The charts need matplotlib; the CUDA machine has no network, and the
    # models case's chart can be drawn later from its JSON (models_report).
    if options.sweep or ("models" in options.cases and backend != "cuda"):
        install_missing(python, "matplotlib")
    env = {"PYTHONPATH": _python_path(layout)}
    if "models" in options.cases:
        _ensure_mlx_lm(python, backend, env)
    out = ["--out-dir", str(layout.results)]
    code = run_python(python, "-m", PAYLOAD, options.to_json(), *out, env=env).returncode
    if code != 0:
        return Result(code)
    where = layout.results.relative_to(layout.root)
    found = [f"results in {where}/bench-{options.device}.*"]
    if "models" in options.cases:
        found.append(f"raw numbers and chart in {where}/bench-models-{options.device}.*")
    return Result(messages=tuple(found))


def _python_path(layout: Layout) -> str:
    """mlxr's source (src/, first: scripts/mlxr.py would shadow the package), the
    payloads (scripts/), then what the caller had, such as the device machine's
    folder of mlx-lm."""
    paths = [str(layout.adoption_package.parent), str(layout.scripts)]
    inherited = os.environ.get("PYTHONPATH")
    return os.pathsep.join(paths + ([inherited] if inherited else []))


def _ensure_mlx_lm(python: Path, backend: str, env: dict[str, str | None]) -> None:
    """The models case needs mlx-lm. Where it imports (as on the device machine,
    from PYTHONPATH, without a network), nothing is installed."""
    probe = run_python(python, "-c", "import mlx_lm.models.cache", env=env, capture=True)
    if probe.returncode == 0:
        return
    if backend == "cuda":
        raise UserError(
            "the models case needs mlx-lm, which this venv cannot import",
            fix=f"put mlx-lm on PYTHONPATH or install {MLX_LM} into {python.parent.parent}",
        )
    install(python, MLX_LM)


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
