"""A thin, strict wrapper around the git command line, and the work trees the queue makes."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from ..progress import say

# Fixed identity and dates make applied commits reproducible across runs.
_STABLE_ENV = {
    "GIT_COMMITTER_NAME": "mlxr",
    "GIT_COMMITTER_EMAIL": "mlxr@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class GitError(UserError):
    """A git command failed; its message carries the command and git's own words."""


def git(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
) -> str:
    full_env = {**os.environ, **_STABLE_ENV, **(env or {})}
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=full_env,
        input=input,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        cmd = " ".join(["git", *args])
        raise GitError(f"{cmd} (in {cwd}) failed:\n{proc.stderr.strip()}")
    return proc.stdout


def show_bytes(repo: Path, commit: str, path: str) -> bytes:
    """A file's content at a commit, byte for byte (git() decodes text)."""
    return subprocess.run(
        ["git", "show", f"{commit}:{path}"], cwd=repo, capture_output=True, check=True
    ).stdout


def rev_parse(ref: str, cwd: Path) -> str:
    return git("rev-parse", "--verify", f"{ref}^{{commit}}", cwd=cwd).strip()


def commit_of(ref: str, cwd: Path) -> str | None:
    """The commit `ref` names in the repository at cwd, or None where it names none."""
    out = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=cwd, check=False)
    return out.strip() or None


def head(tree: Path) -> str:
    return git("rev-parse", "HEAD", cwd=tree).strip()


def submodule_pin(root: Path, path: str = "mlx_upstream") -> str:
    """The commit the superproject records for the submodule (not its HEAD)."""
    line = git("ls-files", "-s", "--", path, cwd=root).strip()
    if not line.startswith("160000"):
        raise GitError(f"{path} is not a submodule of {root}")
    return line.split()[1]


def ensure_submodule(root: Path, path: str = "mlx_upstream") -> None:
    if not (root / path / ".git").exists():
        say(f"initialising submodule {path}")
        git("submodule", "update", "--init", "--", path, cwd=root)


def unfinished_operation(tree: Path) -> str | None:
    """A rebase or `git am` stopped half-way in tree, if any."""
    for name, what in (("rebase-merge", "rebase"), ("rebase-apply", "rebase or git am")):
        if (tree / git("rev-parse", "--git-path", name, cwd=tree).strip()).exists():
            return what
    return None


def add_worktree(repo: Path, path: Path, commit: str) -> None:
    """A detached work tree of repo at commit, replacing whatever was at path."""
    if path.exists():
        remove_worktree(repo, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    git("worktree", "prune", cwd=repo)
    git("worktree", "add", "--force", "--detach", str(path), commit, cwd=repo)


def remove_worktree(repo: Path, path: Path) -> None:
    git("worktree", "remove", "--force", str(path), cwd=repo, check=False)
    if path.exists():
        shutil.rmtree(path)
    git("worktree", "prune", cwd=repo)


def add_branch_worktree(repo: Path, path: Path, branch: str, commit: str) -> None:
    """A work tree at path on `branch`, which is set to commit."""
    git("worktree", "prune", cwd=repo)
    git("branch", "--force", branch, commit, cwd=repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    git("worktree", "add", "--quiet", str(path), branch, cwd=repo)


@contextmanager
def scratch_worktree(repo: Path, path: Path, commit: str) -> Iterator[Path]:
    """A work tree that lasts as long as the with block."""
    add_worktree(repo, path, commit)
    try:
        yield path
    finally:
        remove_worktree(repo, path)
