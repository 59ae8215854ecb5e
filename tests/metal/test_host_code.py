"""The overlay's Metal host code compiles against MLX's own headers.

metal-cpp is replaced by hostshim/Metal/Metal.hpp, a stand-in that declares
the parts MLX's Metal headers use; `-fsyntax-only` checks every name, type and
call in the host code without linking or running it.
"""

import os
import subprocess
from pathlib import Path

import pytest
from harness import HERE, ROOT
from mlxrtools.applier import add_worktree, commit_series, remove_worktree
from mlxrtools.gitcmd import submodule_pin
from mlxrtools.layout import Layout
from mlxrtools.series import load_patches

HOST_FILES = sorted(
    p.relative_to(ROOT / "overlay").as_posix()
    for p in (ROOT / "overlay" / "mlx" / "backend" / "metal").glob("*.cpp")
)


@pytest.fixture(scope="module")
def applied_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = Layout(ROOT)
    tree = tmp_path_factory.mktemp("host") / "tree"
    add_worktree(layout.upstream, tree, submodule_pin(ROOT))
    commit_series(tree, load_patches(layout.patches), layout.overlay)
    yield tree
    remove_worktree(layout.upstream, tree)


def syntax_check(tree: Path, source: str) -> subprocess.CompletedProcess:
    cmd = [
        os.environ.get("CXX", "g++"), "-std=c++20", "-fsyntax-only", "-Wall", "-Werror",
        f"-I{HERE / 'hostshim'}", f"-I{tree}", str(tree / source),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


def test_there_is_metal_host_code() -> None:
    assert "mlx/backend/metal/rms_norm_fused.cpp" in HOST_FILES


@pytest.mark.parametrize("source", HOST_FILES)
def test_metal_host_code_compiles(applied_tree: Path, source: str) -> None:
    proc = syntax_check(applied_tree, source)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_a_broken_host_file_is_caught(applied_tree: Path) -> None:
    source = applied_tree / "mlx/backend/metal/rms_norm_fused.cpp"
    broken = source.read_text().replace("compute_encoder.set_bytes(eps_, 5);", "set_bytes(eps_);")
    assert broken != source.read_text()
    target = applied_tree / "mlx/backend/metal/broken_for_test.cpp"
    target.write_text(broken)
    try:
        assert syntax_check(applied_tree, "mlx/backend/metal/broken_for_test.cpp").returncode != 0
    finally:
        target.unlink()
