"""The adoption layer's wheel: the pure-Python `mlxr` package (src/mlxr, `mlxr.fuse`), built
by the top-level pyproject.toml into wheels/ next to the mlx wheel, and installed after it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..layout import Layout
from ..progress import say
from .venv import pip
from .wheels import WheelSlot


def _slot(folder: Path) -> WheelSlot:
    return WheelSlot(folder, "mlxr-*.whl", ".mlxr-adoption.json")


def adoption_inputs(layout: Layout) -> list[Path]:
    """The files the wheel is built from: the project metadata, its readme, the package."""
    return [
        layout.pyproject,
        layout.adoption_readme,
        *sorted(layout.adoption_package.rglob("*.py")),
    ]


def _key(layout: Layout) -> str:
    digest = hashlib.sha256()
    for path in adoption_inputs(layout):
        digest.update(str(path.relative_to(layout.root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_adoption_wheel(layout: Layout, python: Path, out_dir: Path) -> Path:
    """Build mlxr-<version>-py3-none-any.whl into out_dir with `python`'s pip, unless
    one of the same inputs is there. pip builds it with the backend pyproject.toml
    names (hatchling), which it fetches from the package index the first time."""
    slot, key = _slot(out_dir), _key(layout)
    kept = slot.current(key)
    if kept:
        say(f"{kept.name} is up to date")
        return kept
    dist = layout.dist("adoption")
    shutil.rmtree(dist, ignore_errors=True)
    pip(python, "wheel", "-q", "--no-deps", "-w", str(dist), str(layout.root))
    return slot.keep(dist, key)
