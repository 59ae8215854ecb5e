"""Patches become commits: exactly on their own pin, or with a three-way merge elsewhere.

Each patch is one `git am` followed by the overlay files it claims, amended into
the same commit, so that the applied tree has one self-contained commit a patch.
`git am` refuses hunks whose context does not match, so nothing applies with
fuzz; committer dates equal author dates, so the same inputs give the same commits.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .git import GitError, git, head
from .series import Patch

CLEAN, MERGED, CONFLICT = "clean", "applied with merge", "conflicting"


class ApplyError(UserError):
    pass


@dataclass(frozen=True)
class Outcome:
    patch: str
    status: str  # CLEAN, MERGED or CONFLICT
    detail: str = ""


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


def _am(tree: Path, text: str, three_way: bool) -> str | None:
    """git am one mail; None where it applied, else git's complaint."""
    args = ["am", "--quiet", "--keep-cr", "--committer-date-is-author-date"]
    try:
        git(*args, *(["-3"] if three_way else []), cwd=tree, input=text)
    except GitError as err:
        return str(err)
    return None


def add_overlay_files(tree: Path, patch: Patch, overlay_dir: Path) -> str | None:
    """Add the overlay files a patch claims to its commit; say why not where they cannot be."""
    claimed = patch.overlay
    for rel in claimed:
        if not (overlay_dir / rel).is_file():
            return f"it claims overlay/{rel}, which does not exist"
        if git("ls-files", "--", rel, cwd=tree).strip():
            return f"overlay/{rel} would shadow a file the tree already has"
    for rel in claimed:
        dst = tree / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(overlay_dir / rel, dst)
    if claimed:
        date = git("log", "-1", "--format=%aD", cwd=tree).strip()
        git("add", "--", *claimed, cwd=tree)
        git(
            "commit", "--quiet", "--amend", "--no-edit", "--no-verify",
            cwd=tree, env={"GIT_COMMITTER_DATE": date},
        )  # fmt: skip
    return None


def apply_patch(
    tree: Path, patch: Patch, overlay_dir: Path, three_way: bool, keep_conflict: bool = False
) -> Outcome:
    """Apply one patch exactly if it can; else, with `three_way`, with a three-way merge.

    On a conflict the am session is aborted, unless `keep_conflict` is set: then it
    is left in progress for a person to resolve.
    """
    failure, status = _am(tree, patch.text, three_way=False), CLEAN
    if failure is not None and three_way:
        git("am", "--abort", cwd=tree, check=False)
        failure, status = _am(tree, patch.text, three_way=True), MERGED
    if failure is not None:
        files = git("diff", "--name-only", "--diff-filter=U", cwd=tree).split()
        if not keep_conflict:
            git("am", "--abort", cwd=tree, check=False)
        detail = ", ".join(files) if three_way else f"does not apply:\n{failure}"
        return Outcome(patch.name, CONFLICT, detail or "does not apply")
    clash = add_overlay_files(tree, patch, overlay_dir)
    return Outcome(patch.name, CONFLICT, clash) if clash else Outcome(patch.name, status)


def commit_series(tree: Path, patches: list[Patch], overlay_dir: Path) -> str:
    """Apply the series exactly onto tree's HEAD (its pin); return the last commit."""
    for patch in patches:
        outcome = apply_patch(tree, patch, overlay_dir, three_way=False)
        if outcome.status == CONFLICT:
            raise ApplyError(f"{patch.name}: {outcome.detail}")
    return head(tree)


def apply_onto(tree: Path, patches: list[Patch], overlay_dir: Path) -> list[Outcome]:
    """Apply every patch onto another upstream commit, three-way where needed; a
    conflicting patch is left out and the rest still tried."""
    return [apply_patch(tree, patch, overlay_dir, three_way=True) for patch in patches]
