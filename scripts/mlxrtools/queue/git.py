"""A thin, strict wrapper around the git command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# Fixed identity and dates make applied commits reproducible across runs.
_STABLE_ENV = {
    "GIT_COMMITTER_NAME": "mlxr",
    "GIT_COMMITTER_EMAIL": "mlxr@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class GitError(RuntimeError):
    pass


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


def rev_parse(ref: str, cwd: Path) -> str:
    return git("rev-parse", "--verify", f"{ref}^{{commit}}", cwd=cwd).strip()


def submodule_pin(root: Path, path: str = "mlx_upstream") -> str:
    """The commit the superproject records for the submodule (not its HEAD)."""
    line = git("ls-files", "-s", "--", path, cwd=root).strip()
    if not line.startswith("160000"):
        raise GitError(f"{path} is not a submodule of {root}")
    return line.split()[1]


def ensure_submodule(root: Path, path: str = "mlx_upstream") -> None:
    if not (root / path / ".git").exists():
        print(f"mlxr: initialising submodule {path}", flush=True)
        git("submodule", "update", "--init", "--", path, cwd=root)
