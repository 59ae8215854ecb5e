"""The applied tree for tests that compile overlay code against MLX's headers:
upstream at the pin with the series committed, in a git worktree of its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlxrtools.layout import Layout
from mlxrtools.queue.apply import commit_series
from mlxrtools.queue.git import add_worktree, remove_worktree, submodule_pin
from mlxrtools.queue.series import load_patches

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def applied_worktree(parent: Path) -> Iterator[Path]:
    layout = Layout(ROOT)
    tree = parent / "tree"
    add_worktree(layout.upstream, tree, submodule_pin(ROOT))
    try:
        commit_series(tree, load_patches(layout.patches), layout.overlay)
        yield tree
    finally:
        remove_worktree(layout.upstream, tree)
