"""The series on other upstream refs: the pull-request branch and the drift canary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..layout import Layout
from ..progress import say
from .apply import Outcome, apply_onto
from .git import add_branch_worktree, git, remove_worktree, scratch_worktree
from .series import load_patches, upstream_bound, without_vendor_fields
from .tree import prepare_upstream, resolve_ref

BRANCH = "mlxr/upstream-rmsnorm-fused"


@dataclass(frozen=True)
class Branch:
    tree: Path
    base: str  # the upstream commit it starts from
    outcomes: list[Outcome]

    def changed_files(self) -> list[str]:
        return git("diff", "--name-only", f"{self.base}..HEAD", cwd=self.tree).split()

    def commits(self) -> list[str]:
        log = git("log", "--reverse", "--format=%h %s", f"{self.base}..HEAD", cwd=self.tree)
        return log.splitlines()


def check_against(layout: Layout, ref: str) -> list[Outcome]:
    """Drift canary: apply the upstream-bound series onto `ref` in a scratch tree."""
    prepare_upstream(layout)
    commit = resolve_ref(layout, ref)
    with scratch_worktree(layout.upstream, layout.against_scratch, commit) as scratch:
        patches = upstream_bound(load_patches(layout.patches))
        return apply_onto(scratch, patches, layout.overlay)


def make_branch(layout: Layout, onto: str) -> Branch:
    """BRANCH on `onto` in build/upstream-branch: the upstream-bound patches, with
    their overlay files and without our vendor fields."""
    prepare_upstream(layout)
    commit = resolve_ref(layout, onto)
    tree = layout.upstream_branch
    say(f"{BRANCH} on {onto} ({commit[:12]}) in {tree}")
    if (tree / ".git").exists():
        remove_worktree(layout.upstream, tree)
    add_branch_worktree(layout.upstream, tree, BRANCH, commit)
    patches = [without_vendor_fields(p) for p in upstream_bound(load_patches(layout.patches))]
    return Branch(tree, commit, apply_onto(tree, patches, layout.overlay))


def outcome_rows(outcomes: list[Outcome], ref: str) -> tuple[str, ...]:
    """A table of how each patch applied onto ref."""
    width = max((len(o.patch) for o in outcomes), default=0)
    rows = tuple(
        f"  {o.patch:<{width}}  {o.status}" + (f" ({o.detail})" if o.detail else "")
        for o in outcomes
    )
    return rows or (f"  no upstream-bound patches to apply onto {ref}",)
