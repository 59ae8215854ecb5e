"""The adoption layer's wheel: the pure-Python `mlxr` package (src/mlxr, `mlxr.fuse`), built
by the top-level pyproject.toml into wheels/ next to the mlx wheel, and installed after it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from ..layout import Layout

STAMP = ".mlxr-adoption.json"


def adoption_inputs(layout: Layout) -> list[Path]:
    """The files the wheel is built from: the project metadata, its readme, the package."""
    root = layout.root
    return [
        root / "pyproject.toml",
        root / "docs" / "adoption.md",
        *sorted((root / "src" / "mlxr").rglob("*.py")),
    ]


def _key(layout: Layout) -> str:
    digest = hashlib.sha256()
    for path in adoption_inputs(layout):
        digest.update(str(path.relative_to(layout.root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_adoption_wheel(layout: Layout, out_dir: Path | None = None) -> Path:
    """Build wheels/mlxr-<version>-py3-none-any.whl unless one of the same inputs is there.

    pip builds it with the backend pyproject.toml names (hatchling), which it fetches from
    the package index the first time."""
    from .build import ensure_build_venv  # build.py calls this module

    out_dir = out_dir or layout.wheels
    key = _key(layout)
    stamp = out_dir / STAMP
    wheels = sorted(out_dir.glob("mlxr-*.whl"))
    if len(wheels) == 1 and stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        print(f"mlxr build: {wheels[0].name} is up to date", flush=True)
        return wheels[0]
    python = ensure_build_venv(layout)
    dist = layout.build / "dist" / "adoption"
    shutil.rmtree(dist, ignore_errors=True)
    subprocess.run(
        [str(python), "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
         "-w", str(dist), str(layout.root)],
        check=True,
    )  # fmt: skip
    built = sorted(dist.glob("mlxr-*.whl"))
    if len(built) != 1:
        raise RuntimeError(f"expected one mlxr wheel in {dist}, found {len(built)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in wheels:
        old.unlink()
    target = out_dir / built[0].name
    shutil.move(built[0], target)
    stamp.write_text(json.dumps({"key": key, "wheel": target.name}) + "\n")
    print(f"mlxr build: {target}", flush=True)
    return target


def install_adoption_wheel(python: Path, layout: Layout) -> None:
    """Install the mlxr wheel from wheels/ into a venv that has our mlx wheel already."""
    wheels = sorted(layout.wheels.glob("mlxr-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one mlxr wheel in {layout.wheels}, found {len(wheels)}")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--force-reinstall", str(wheels[0])],
        check=True,
    )  # fmt: skip
    print(f"mlxr install: {wheels[0].name}", flush=True)
