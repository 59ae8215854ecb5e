"""The `bump` verb: move the pin to another upstream tag and carry the series over."""

from __future__ import annotations

import json
from pathlib import Path

from ..layout import APPLIED_BRANCH, Layout
from .git import git
from .onto import CONFLICT, add_overlay_files, apply_patch
from .series import load_patches
from .tree import apply, export, prepare_upstream, unexported_work, write_stamp
from .upstream import resolve_ref


def _state_path(layout: Layout) -> Path:
    return layout.build / "bump-state.json"


def _am_in_progress(tree: Path) -> bool:
    path = git("rev-parse", "--git-path", "rebase-apply", cwd=tree).strip()
    return (tree / path).exists() if not Path(path).is_absolute() else Path(path).exists()


def bump(layout: Layout, tag: str) -> int:
    if _state_path(layout).exists():
        raise RuntimeError("a bump is in progress: finish it with `bump --continue`")
    pending = unexported_work(layout)
    if pending:
        raise RuntimeError(f"build/mlx-src has work that is not exported ({pending})")
    tree = apply(layout, quiet=True)
    target = resolve_ref(layout, tag)
    print(f"mlxr bump: carrying the series onto {tag} ({target[:12]})", flush=True)
    git("checkout", "--quiet", "--force", "-B", APPLIED_BRANCH, target, cwd=tree)
    names = [p.name for p in load_patches(layout.patches)]
    state = {"tag": tag, "target": target, "patches": names, "next": 0}
    return _carry(layout, tree, state)


def bump_continue(layout: Layout) -> int:
    path = _state_path(layout)
    if not path.exists():
        raise RuntimeError("no bump is in progress")
    state = json.loads(path.read_text())
    tree = layout.applied_tree
    if _am_in_progress(tree):
        raise RuntimeError(
            f"git am is still in progress in {tree}: resolve, `git add`, `git am --continue`"
        )
    patches = {p.name: p for p in load_patches(layout.patches)}
    resolved = patches[state["patches"][state["next"]]]
    clash = add_overlay_files(tree, resolved, layout.overlay)
    if clash:
        raise RuntimeError(f"{resolved.name}: {clash}")
    state["next"] += 1
    return _carry(layout, tree, state)


def _carry(layout: Layout, tree: Path, state: dict) -> int:
    patches = {p.name: p for p in load_patches(layout.patches)}
    while state["next"] < len(state["patches"]):
        patch = patches[state["patches"][state["next"]]]
        outcome = apply_patch(tree, patch, layout.overlay, stop=True)
        print(f"  {patch.name}: {outcome.status}", flush=True)
        if outcome.status == CONFLICT:
            _state_path(layout).write_text(json.dumps(state) + "\n")
            print(
                f"\nmlxr bump: {patch.name} conflicts with {state['tag']} in {outcome.detail}.\n"
                f"  1. cd {tree} and resolve the conflicts (git status lists them)\n"
                "  2. git add <files> && git am --continue\n"
                "  3. python3 scripts/mlxr.py bump --continue\n"
                "To give up instead: git am --abort, delete build/bump-state.json and run "
                "`python3 scripts/mlxr.py apply --force`."
            )
            return 1
        state["next"] += 1
    _finish(layout, tree, state)
    return 0


def _finish(layout: Layout, tree: Path, state: dict) -> None:
    git("checkout", "--quiet", state["target"], cwd=layout.upstream)
    git("add", "mlx_upstream", cwd=layout.root)
    prepare_upstream(layout)
    changes = export(layout)
    write_stamp(layout)
    _state_path(layout).unlink(missing_ok=True)
    for line in changes:
        print(f"  {line}")
    print(
        f"mlxr bump: mlx_upstream now pins {state['tag']}; patches/ and overlay/ are "
        "re-exported.\nReview, run `python3 scripts/mlxr.py check` and the tests, then commit:\n"
        f"  git add mlx_upstream patches overlay && git commit -m 'Bump MLX to {state['tag']}'"
    )
