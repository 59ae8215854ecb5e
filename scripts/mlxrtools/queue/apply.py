"""Turn pin + series + overlay into commits, one per patch."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from .git import GitError, git
from .series import Patch


class ApplyError(RuntimeError):
    pass


def fingerprint(pin: str, patches: list[Patch], overlay_dir: Path) -> str:
    """A digest of everything apply reads, so that unchanged inputs are a no-op."""
    h = hashlib.sha256(pin.encode())
    for patch in patches:
        h.update(patch.name.encode() + b"\0" + patch.text.encode() + b"\0")
        for path in patch.overlay:
            f = overlay_dir / path
            h.update(path.encode() + b"\0")
            h.update(f.read_bytes() if f.exists() else b"<missing>")
            h.update(b"x" if f.exists() and f.stat().st_mode & 0o111 else b"-")
    return h.hexdigest()


def add_worktree(repo: Path, path: Path, commit: str) -> None:
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


def commit_series(tree: Path, patches: list[Patch], overlay_dir: Path) -> str:
    """Apply each patch with git am in `tree` (at the base), then add its overlay files.

    git am refuses hunks whose context does not match, so nothing applies with fuzz.
    Committer dates equal author dates: the same inputs give the same commits.
    """
    for patch in patches:
        try:
            git(
                "am",
                "--quiet",
                "--keep-cr",
                "--committer-date-is-author-date",
                cwd=tree,
                input=patch.text,
            )
        except GitError as err:
            git("am", "--abort", cwd=tree, check=False)
            raise ApplyError(f"{patch.name} does not apply:\n{err}") from err
        claimed = patch.overlay
        for rel in claimed:
            src = overlay_dir / rel
            if not src.is_file():
                raise ApplyError(f"{patch.name} claims overlay/{rel}, which does not exist")
            dst = tree / rel
            if dst.exists() and git("ls-files", "--", rel, cwd=tree).strip():
                raise ApplyError(f"overlay/{rel} would shadow a file already in the tree")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        if claimed:
            date = git("log", "-1", "--format=%aD", cwd=tree).strip()
            git("add", "--", *claimed, cwd=tree)
            git(
                "commit",
                "--quiet",
                "--amend",
                "--no-edit",
                "--no-verify",
                cwd=tree,
                env={"GIT_COMMITTER_DATE": date},
            )
    return git("rev-parse", "HEAD", cwd=tree).strip()
