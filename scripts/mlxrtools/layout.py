"""Where everything lives: the repository's layers and every path under build/.

Code elsewhere names a path through Layout, never by joining "build" to the
root itself, so that this file is the one map of what the tooling writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

UPSTREAM_URL = "https://github.com/ml-explore/mlx.git"
BASE_REF = "refs/mlxr/base"
APPLIED_BRANCH = "mlxr/applied"


def _in_repo(*parts: str, doc: str) -> property:
    return property(lambda self: self.root.joinpath(*parts), doc=doc)


def _in_build(name: str, doc: str) -> property:
    return property(lambda self: self.build / name, doc=doc)


@dataclass(frozen=True)
class Layout:
    root: Path

    # The repository.
    upstream = _in_repo("mlx_upstream", doc="the submodule at the pin; never edited")
    overlay = _in_repo("overlay", doc="files that upstream does not have, at their tree paths")
    patches = _in_repo("patches", doc="the series' mails")
    series = _in_repo("patches", "series", doc="the order of the patches")
    wheels = _in_repo("wheels", doc="the built wheels")
    tests = _in_repo("tests", doc="our tests")
    scripts = _in_repo("scripts", doc="mlxr.py and mlxrtools/, the tooling")
    pyproject = _in_repo("pyproject.toml", doc="the mlxr package, and our version")
    adoption_package = _in_repo("src", "mlxr", doc="the adoption layer's Python package")
    adoption_readme = _in_repo("docs", "adoption.md", doc="its readme")

    # build/: everything the tooling makes, ignored by git.
    build = _in_repo("build", doc="the folder of everything below")
    applied_tree = _in_build("mlx-src", "the pin plus one commit per patch (`apply`)")
    applied_stamp = _in_build("mlx-src.stamp", "what the applied tree was made from")
    apply_scratch = _in_build("apply-scratch", "where `apply` builds the series first")
    pristine_tree = _in_build("mlx-pristine", "the unpatched pin; as deep as mlx-src for ccache")
    against_scratch = _in_build("against-scratch", "where `check --against` applies")
    upstream_branch = _in_build("upstream-branch", "the pull-request branch's work tree")
    bump_state = _in_build("bump-state.json", "a stopped bump's place in the series")
    build_venv = _in_build("venv", "setuptools, CMake and Ninja for the wheel builds")
    test_venv = _in_build("test-venv", "the wheels and every test requirement")
    tooling_venv = _in_build("tooling-venv", "the tests that need no wheel")
    format_venv = _in_build("format-venv", "upstream's formatters at its pinned versions")
    bench_cuda_venv = _in_build("bench-venv-cuda", "the wheel beside the machine's PyTorch")
    baseline_venv = _in_build("baseline-venv", "the unpatched wheel, for upstream's suite")
    baseline_wheels = _in_build("baseline-wheel", "the unpatched wheel")
    upstream_branch_venv = _in_build("upstream-branch-venv", "the pull-request branch's wheel")
    upstream_branch_wheels = _in_build("upstream-branch-wheel", "that wheel")
    deps = _in_build("deps", "pinned dependencies unpacked from `deps --pack` archives")
    toolkit_nvtx = _in_build("deps/nvtx3-toolkit", "NVTX from the CUDA toolkit, on request")
    results = _in_build("results", "test and bench results")
    logs = _in_build("logs", "full build logs")

    def dist(self, name: str) -> Path:
        """Where pip writes the wheel of `name` before it is kept."""
        return self.build / "dist" / name

    def build_log(self, name: str) -> Path:
        return self.logs / f"build-{name}.log"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_layout() -> Layout:
    return Layout(repo_root())


def cache_home() -> Path:
    """Per-user cache shared by every clone (ccache, upstream-suite baselines)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlxr"
