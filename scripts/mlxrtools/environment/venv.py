"""Install an mlxr wheel into a Python environment, replacing any stock MLX."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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


def pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], check=True)


def installed(python: Path) -> set[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {p["name"].lower().replace("_", "-") for p in json.loads(out)}


def mlx_file_owners(python: Path) -> dict[str, dict[str, object]]:
    """Which installed distributions own files under mlx/, by their RECORDs."""
    out = subprocess.run(
        [str(python), "-c", _OWNERS_SCRIPT], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def install_wheel(python: Path, wheel: Path) -> None:
    stock = [p for p in STOCK_PACKAGES if p in installed(python)]
    if stock:
        print(f"mlxr install: removing {' '.join(stock)} first", flush=True)
        pip(python, "uninstall", "-q", "-y", *stock)
    pip(python, "install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    owners = mlx_file_owners(python)
    others = sorted(name for name in owners if name.lower() != "mlx")
    if others:
        raise RuntimeError(f"after installing, mlx/ files are still owned by {', '.join(others)}")
    version = owners.get("mlx", {}).get("version", "")
    if "+mlxr" not in str(version):
        raise RuntimeError(f"mlx {version} is installed, not the mlxr wheel")
    print(f"mlxr install: mlx {version} owns every mlx/ file", flush=True)
