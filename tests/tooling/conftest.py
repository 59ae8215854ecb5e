"""A throwaway upstream repository and a superproject that pins it."""

import os
import subprocess
from pathlib import Path

import pytest
from mlxrtools.layout import Layout

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.com",
    "GIT_AUTHOR_DATE": "2026-01-02T03:04:05+00:00",
    "GIT_COMMITTER_DATE": "2026-01-02T03:04:05+00:00",
    # Local clones of the throwaway upstream, as CI's mirror set-up allows.
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "protocol.file.allow",
    "GIT_CONFIG_VALUE_0": "always",
}

LINES = [f"line {i}" for i in range(1, 21)]


def run_git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(autouse=True)
def git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    repo.mkdir()
    run_git("init", "-q", "-b", "main", cwd=repo)
    write(repo / "src" / "core.txt", "\n".join(LINES) + "\n")
    write(repo / "src" / "registry.txt", "alpha\nbeta\ngamma\n")
    run_git("add", ".", cwd=repo)
    run_git("commit", "-q", "-m", "upstream: initial", cwd=repo)
    run_git("tag", "v1", cwd=repo)
    return repo


@pytest.fixture
def layout(tmp_path: Path, upstream: Path) -> Layout:
    root = tmp_path / "overlay-repo"
    root.mkdir()
    run_git("init", "-q", "-b", "main", cwd=root)
    run_git("submodule", "add", "-q", str(upstream), "mlx_upstream", cwd=root)
    (root / "patches").mkdir()
    (root / "overlay").mkdir()
    run_git("commit", "-q", "-m", "pin upstream", cwd=root)
    return Layout(root)


def commit_in_tree(tree: Path, message: str) -> None:
    run_git("add", "-A", cwd=tree)
    run_git("commit", "-q", "-m", message, cwd=tree)


FIELDS = "Origin: vendor\nForwarded: no\nUpstream-Plan: upstream\nLast-Update: 2026-01-02"


@pytest.fixture
def exported(layout: Layout) -> Layout:
    """A series of two patches, the first with an overlay file, exported."""
    from mlxrtools.queue.tree import apply, export

    tree = apply(layout).tree
    core = tree / "src" / "core.txt"
    core.write_text(core.read_text().replace("line 10\n", "line 10\nline 10.5\n"))
    write(tree / "src" / "fused.txt", "a new file\n")
    commit_in_tree(tree, f"core: add the fused line\n\nWhy it helps.\n\n{FIELDS}")
    registry = tree / "src" / "registry.txt"
    registry.write_text(registry.read_text() + "fused\n")
    commit_in_tree(tree, f"registry: register fused\n\nSo it is found.\n\n{FIELDS}")
    export(layout)
    return layout
