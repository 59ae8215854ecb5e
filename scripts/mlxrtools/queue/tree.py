"""The `apply` and `export` verbs: the applied work tree in build/mlx-src."""

from __future__ import annotations

import json
from pathlib import Path

from ..layout import APPLIED_BRANCH, BASE_REF, Layout
from .apply import ApplyError, add_worktree, commit_series, fingerprint, remove_worktree
from .export import current_state, differences, export_commits, write_state
from .git import ensure_submodule, git, submodule_pin
from .series import load_patches


def _stamp_path(layout: Layout) -> Path:
    return layout.build / "mlx-src.stamp"


def _read_stamp(layout: Layout) -> dict[str, str]:
    try:
        return json.loads(_stamp_path(layout).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def prepare_upstream(layout: Layout) -> str:
    """Initialise the submodule, mark its pin with BASE_REF and return the pin."""
    ensure_submodule(layout.root)
    pin = submodule_pin(layout.root)
    if git("cat-file", "-t", pin, cwd=layout.upstream, check=False).strip() != "commit":
        git("fetch", "--quiet", "origin", pin, cwd=layout.upstream)
    git("update-ref", BASE_REF, pin, cwd=layout.upstream)
    return pin


def unexported_work(layout: Layout) -> str | None:
    """Describe edits in the applied tree that export has not captured, if any."""
    tree = layout.applied_tree
    if not (tree / ".git").exists():
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no", cwd=tree).strip()
    if dirty:
        return "uncommitted changes:\n" + dirty
    stamp = _read_stamp(layout)
    head = git("rev-parse", "HEAD", cwd=tree).strip()
    if stamp.get("head") and head != stamp["head"]:
        return f"HEAD {head[:12]} differs from the last applied series {stamp['head'][:12]}"
    return None


def apply(layout: Layout, force: bool = False, quiet: bool = False) -> Path:
    pin = prepare_upstream(layout)
    patches = load_patches(layout.patches)
    digest = fingerprint(pin, patches, layout.overlay)
    tree = layout.applied_tree
    stamp = _read_stamp(layout)
    pending = unexported_work(layout)
    if pending is None and stamp.get("inputs") == digest and (tree / ".git").exists():
        if not quiet:
            print(f"mlxr apply: {tree.relative_to(layout.root)} is up to date")
        return tree
    if pending and not force:
        raise ApplyError(
            f"{tree} has work that is not exported ({pending}).\n"
            "Run `scripts/mlxr.py export` first, or `apply --force` to discard it."
        )
    scratch = layout.build / "apply-scratch"
    add_worktree(layout.upstream, scratch, pin)
    try:
        head = commit_series(scratch, patches, layout.overlay)
    finally:
        remove_worktree(layout.upstream, scratch)
    if (tree / ".git").exists():
        # checkout touches only files that differ, so unchanged files keep their times
        # and the build stays incremental.
        git("checkout", "--quiet", "--force", "-B", APPLIED_BRANCH, head, cwd=tree)
    else:
        git("worktree", "prune", cwd=layout.upstream)
        git("branch", "--force", APPLIED_BRANCH, head, cwd=layout.upstream)
        tree.parent.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--quiet", str(tree), APPLIED_BRANCH, cwd=layout.upstream)
    _save_stamp(layout, digest, head)
    if not quiet:
        print(
            f"mlxr apply: {len(patches)} patches on {pin[:12]} in {tree.relative_to(layout.root)}"
        )
    return tree


def export(layout: Layout, check_only: bool = False) -> list[str]:
    """Regenerate patches/ and overlay/ from the applied tree; return what changed."""
    tree = layout.applied_tree
    if not (tree / ".git").exists():
        raise ApplyError("nothing to export: run `scripts/mlxr.py apply` first")
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


def unfinished_operation(tree: Path) -> str | None:
    """A rebase or `git am` stopped half-way, whose HEAD is not the whole series."""
    for name, what in (("rebase-merge", "rebase"), ("rebase-apply", "rebase or git am")):
        path = tree / git("rev-parse", "--git-path", name, cwd=tree).strip()
        if path.exists():
            return what
    return None


def write_stamp(layout: Layout) -> None:
    """Record that the applied tree's HEAD is what patches/ and overlay/ describe."""
    head = git("rev-parse", "HEAD", cwd=layout.applied_tree).strip()
    pin = submodule_pin(layout.root)
    _save_stamp(layout, fingerprint(pin, load_patches(layout.patches), layout.overlay), head)


def _save_stamp(layout: Layout, inputs: str, head: str) -> None:
    _stamp_path(layout).write_text(json.dumps({"inputs": inputs, "head": head}) + "\n")
