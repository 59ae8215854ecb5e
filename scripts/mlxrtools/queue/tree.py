"""The applied tree in build/mlx-src: the pin plus one commit a patch, and back again.

`apply` never touches mlx_upstream/ itself: it makes a work tree of the submodule
at the pin, marks the pin with BASE_REF, and applies the series there. A stamp
records what the tree was made from, so that unchanged inputs do nothing and
commits that were not exported are never discarded unasked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..layout import APPLIED_BRANCH, BASE_REF, Layout
from .apply import ApplyError, commit_series, fingerprint
from .export import current_state, differences, export_commits, write_state
from .git import (
    add_branch_worktree,
    commit_of,
    ensure_submodule,
    git,
    head,
    scratch_worktree,
    submodule_pin,
    unfinished_operation,
)
from .series import load_patches


@dataclass(frozen=True)
class Applied:
    tree: Path
    pin: str
    patches: int
    up_to_date: bool  # nothing was done: the tree was already made from these inputs


def prepare_upstream(layout: Layout) -> str:
    """Initialise the submodule, mark its pin with BASE_REF and return the pin."""
    ensure_submodule(layout.root)
    pin = submodule_pin(layout.root)
    if git("cat-file", "-t", pin, cwd=layout.upstream, check=False).strip() != "commit":
        git("fetch", "--quiet", "origin", pin, cwd=layout.upstream)
    git("update-ref", BASE_REF, pin, cwd=layout.upstream)
    return pin


def resolve_ref(layout: Layout, ref: str) -> str:
    """A commit of the upstream repository, fetching from its remote if needed."""
    git("fetch", "--quiet", "--tags", "origin", cwd=layout.upstream, check=False)
    # Upstream's branches, not the stale local ones the submodule clone started with.
    for candidate in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref):
        commit = commit_of(candidate, layout.upstream)
        if commit:
            return commit
    raise UserError(f"{ref} is not a commit, branch or tag of mlx_upstream")


def _read_stamp(layout: Layout) -> dict[str, str]:
    try:
        return json.loads(layout.applied_stamp.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_stamp(layout: Layout, inputs: str, commit: str) -> None:
    layout.applied_stamp.write_text(json.dumps({"inputs": inputs, "head": commit}) + "\n")


def has_tree(layout: Layout) -> bool:
    return (layout.applied_tree / ".git").exists()


def unexported_work(layout: Layout) -> str | None:
    """Describe edits in the applied tree that export has not captured, if any."""
    tree = layout.applied_tree
    if not has_tree(layout):
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no", cwd=tree).strip()
    if dirty:
        return "uncommitted changes:\n" + dirty
    stamp = _read_stamp(layout)
    now = head(tree)
    if stamp.get("head") and now != stamp["head"]:
        return f"HEAD {now[:12]} differs from the last applied series {stamp['head'][:12]}"
    return None


def apply(layout: Layout, force: bool = False) -> Applied:
    """Make the applied tree from the pin, patches/ and overlay/, unless it is current."""
    pin = prepare_upstream(layout)
    patches = load_patches(layout.patches)
    digest = fingerprint(pin, patches, layout.overlay)
    tree = layout.applied_tree
    pending = unexported_work(layout)
    if pending is None and _read_stamp(layout).get("inputs") == digest and has_tree(layout):
        return Applied(tree, pin, len(patches), up_to_date=True)
    if pending and not force:
        raise ApplyError(
            f"{tree} has work that is not exported ({pending})",
            fix="run `scripts/mlxr.py export` first, or `apply --force` to discard it",
        )
    with scratch_worktree(layout.upstream, layout.apply_scratch, pin) as scratch:
        commit = commit_series(scratch, patches, layout.overlay)
    if has_tree(layout):
        # checkout touches only files that differ, so unchanged files keep their times
        # and the build stays incremental.
        git("checkout", "--quiet", "--force", "-B", APPLIED_BRANCH, commit, cwd=tree)
    else:
        add_branch_worktree(layout.upstream, tree, APPLIED_BRANCH, commit)
    _save_stamp(layout, digest, commit)
    return Applied(tree, pin, len(patches), up_to_date=False)


def export(layout: Layout, check_only: bool = False) -> list[str]:
    """Regenerate patches/ and overlay/ from the applied tree; return what changed."""
    tree = layout.applied_tree
    if not has_tree(layout):
        raise ApplyError("nothing to export", fix="run `scripts/mlxr.py apply` first")
    dirty = git("status", "--porcelain", "--untracked-files=no", cwd=tree).strip()
    if dirty:
        raise ApplyError(f"commit your edits in {tree} first:\n{dirty}")
    busy = unfinished_operation(tree)
    if busy:
        raise ApplyError(f"a {busy} is in progress in {tree}: finish or abort it first")
    have = current_state(layout.patches, layout.overlay)
    want = export_commits(tree, BASE_REF, "HEAD", previous=have.patches)
    changes = differences(want, have)
    if not check_only and changes:
        write_state(want, layout.patches, layout.overlay)
        write_stamp(layout)
    return changes


def write_stamp(layout: Layout) -> None:
    """Record that the applied tree's HEAD is what patches/ and overlay/ describe."""
    pin = submodule_pin(layout.root)
    inputs = fingerprint(pin, load_patches(layout.patches), layout.overlay)
    _save_stamp(layout, inputs, head(layout.applied_tree))
