"""Where every layer of the repository lives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

UPSTREAM_URL = "https://github.com/ml-explore/mlx.git"
BASE_REF = "refs/mlxr/base"
APPLIED_BRANCH = "mlxr/applied"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def upstream(self) -> Path:
        return self.root / "mlx_upstream"

    @property
    def overlay(self) -> Path:
        return self.root / "overlay"

    @property
    def patches(self) -> Path:
        return self.root / "patches"

    @property
    def series(self) -> Path:
        return self.patches / "series"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def tests(self) -> Path:
        return self.root / "tests"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def applied_tree(self) -> Path:
        """The upstream work tree with the series applied, one commit a patch."""
        return self.build / "mlx-src"

    @property
    def pristine_tree(self) -> Path:
        """The unpatched tree at the pin; same depth as applied_tree for ccache."""
        return self.build / "mlx-pristine"

    @property
    def build_venv(self) -> Path:
        return self.build / "venv"

    @property
    def test_venv(self) -> Path:
        return self.build / "test-venv"

    @property
    def results(self) -> Path:
        return self.build / "results"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_layout() -> Layout:
    return Layout(repo_root())


def cache_home() -> Path:
    """Per-user cache shared by every clone (ccache, upstream-suite baselines)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlxr"
