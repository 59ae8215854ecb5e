"""Apply the series onto another upstream commit, with a three-way merge if needed."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .git import GitError, git
from .patchfile import PatchMail, strip_fields
from .series import Patch

CLEAN, MERGED, CONFLICT = "clean", "applied with merge", "conflicting"


@dataclass(frozen=True)
class Outcome:
    patch: str
    status: str
    detail: str = ""


def upstream_bound(patches: list[Patch]) -> list[Patch]:
    return [p for p in patches if p.mail.fields.get("Upstream-Plan") == "upstream"]


def without_vendor_fields(patch: Patch) -> Patch:
    """The patch as upstream should see it: its message without our DEP-3 fields."""
    mail = patch.mail
    stripped = PatchMail(mail.headers, strip_fields(mail.body), mail.diff)
    return Patch(patch.name, stripped.render(), claimed=tuple(patch.overlay))


def _am(tree: Path, text: str, three_way: bool) -> bool:
    args = ["am", "--quiet", "--keep-cr", "--committer-date-is-author-date"]
    if three_way:
        args.append("-3")
    try:
        git(*args, cwd=tree, input=text)
        return True
    except GitError:
        return False


def add_overlay_files(tree: Path, patch: Patch, overlay_dir: Path) -> str | None:
    """Add the overlay files a patch claims to its commit; say why not if they clash."""
    claimed = patch.overlay
    for rel in claimed:
        if git("ls-files", "--", rel, cwd=tree).strip():
            return f"overlay/{rel} now exists upstream"
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


def apply_patch(tree: Path, patch: Patch, overlay_dir: Path, stop: bool) -> Outcome:
    """Apply one patch exactly if it can, else with a three-way merge.

    On a conflict the am session is aborted, unless `stop` is set: then it is
    left in progress for a person to resolve.
    """
    if _am(tree, patch.text, three_way=False):
        status = CLEAN
    else:
        git("am", "--abort", cwd=tree, check=False)
        if _am(tree, patch.text, three_way=True):
            status = MERGED
        else:
            files = git("diff", "--name-only", "--diff-filter=U", cwd=tree).split()
            if not stop:
                git("am", "--abort", cwd=tree, check=False)
            return Outcome(patch.name, CONFLICT, ", ".join(files) or "does not apply")
    clash = add_overlay_files(tree, patch, overlay_dir)
    if clash:
        return Outcome(patch.name, CONFLICT, clash)
    return Outcome(patch.name, status)


def apply_onto(
    tree: Path, patches: list[Patch], overlay_dir: Path, stop_on_conflict: bool = False
) -> list[Outcome]:
    outcomes = []
    for patch in patches:
        outcome = apply_patch(tree, patch, overlay_dir, stop_on_conflict)
        outcomes.append(outcome)
        if outcome.status == CONFLICT and stop_on_conflict:
            break
    return outcomes
