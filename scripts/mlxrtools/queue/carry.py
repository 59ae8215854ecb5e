"""Carry the series onto another upstream tag (`bump`), stopping on a conflict.

A stopped carry saves its place in build/bump-state.json, so that a person can
resolve the conflict with git's own tools and resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..layout import APPLIED_BRANCH, Layout
from ..progress import detail, say
from .apply import CONFLICT, Outcome, add_overlay_files, apply_patch
from .git import git, unfinished_operation
from .series import load_patches
from .tree import apply, export, prepare_upstream, resolve_ref, unexported_work, write_stamp


@dataclass
class Carried:
    tag: str
    tree: Path
    conflict: Outcome | None = None  # the patch that stopped the carry, if one did
    changes: list[str] = field(default_factory=list)  # what the re-export changed


def start(layout: Layout, tag: str) -> Carried:
    if layout.bump_state.exists():
        raise UserError("a bump is in progress", fix="finish it with `bump --continue`")
    pending = unexported_work(layout)
    if pending:
        where = layout.applied_tree.relative_to(layout.root)
        raise UserError(f"{where} has work that is not exported ({pending})")
    tree = apply(layout).tree
    target = resolve_ref(layout, tag)
    say(f"carrying the series onto {tag} ({target[:12]})")
    git("checkout", "--quiet", "--force", "-B", APPLIED_BRANCH, target, cwd=tree)
    names = [p.name for p in load_patches(layout.patches)]
    return _carry(layout, {"tag": tag, "target": target, "patches": names, "next": 0})


def resume(layout: Layout) -> Carried:
    """Go on after a person resolved the conflict and finished `git am`."""
    if not layout.bump_state.exists():
        raise UserError("no bump is in progress")
    state = json.loads(layout.bump_state.read_text())
    tree = layout.applied_tree
    if unfinished_operation(tree):
        raise UserError(
            f"git am is still in progress in {tree}",
            fix="resolve, `git add`, `git am --continue`",
        )
    patches = {p.name: p for p in load_patches(layout.patches)}
    resolved = patches[state["patches"][state["next"]]]
    clash = add_overlay_files(tree, resolved, layout.overlay)
    if clash:
        raise UserError(f"{resolved.name}: {clash}")
    state["next"] += 1
    return _carry(layout, state)


def _carry(layout: Layout, state: dict) -> Carried:
    tree = layout.applied_tree
    patches = {p.name: p for p in load_patches(layout.patches)}
    while state["next"] < len(state["patches"]):
        patch = patches[state["patches"][state["next"]]]
        outcome = apply_patch(tree, patch, layout.overlay, three_way=True, keep_conflict=True)
        detail(f"{patch.name}: {outcome.status}")
        if outcome.status == CONFLICT:
            layout.bump_state.write_text(json.dumps(state) + "\n")
            return Carried(state["tag"], tree, conflict=outcome)
        state["next"] += 1
    # Every patch is carried: move the pin and describe the series again.
    git("checkout", "--quiet", state["target"], cwd=layout.upstream)
    git("add", "mlx_upstream", cwd=layout.root)
    prepare_upstream(layout)
    changes = export(layout)
    write_stamp(layout)
    layout.bump_state.unlink(missing_ok=True)
    return Carried(state["tag"], tree, changes=changes)
