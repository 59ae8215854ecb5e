"""The `upstream-branch` verb and `check --against`: the series on other upstream refs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..environment.build import build_wheel
from ..environment.formatting import check_formatting
from ..environment.testing import fresh_venv
from ..layout import Layout
from .apply import add_worktree, remove_worktree
from .git import GitError, git
from .onto import CONFLICT, Outcome, apply_onto, upstream_bound, without_vendor_fields
from .series import load_patches
from .tree import prepare_upstream

BRANCH = "mlxr/upstream-rmsnorm-fused"


def resolve_ref(layout: Layout, ref: str) -> str:
    """A commit of the upstream repository, fetching from its remote if needed."""
    git("fetch", "--quiet", "--tags", "origin", cwd=layout.upstream, check=False)
    # Upstream's branches, not the stale local ones the submodule clone started with.
    for candidate in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref):
        out = git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}",
                  cwd=layout.upstream, check=False).strip()  # fmt: skip
        if out:
            return out
    raise GitError(f"{ref} is not a commit, branch or tag of mlx_upstream")


def report(outcomes: list[Outcome], ref: str) -> None:
    width = max((len(o.patch) for o in outcomes), default=0)
    for o in outcomes:
        detail = f" ({o.detail})" if o.detail else ""
        print(f"  {o.patch:<{width}}  {o.status}{detail}")
    if not outcomes:
        print(f"  no upstream-bound patches to apply onto {ref}")


def check_against(layout: Layout, ref: str) -> list[Outcome]:
    """Drift canary: apply the upstream-bound series onto `ref` in a scratch tree."""
    prepare_upstream(layout)
    commit = resolve_ref(layout, ref)
    scratch = layout.build / "against-scratch"
    add_worktree(layout.upstream, scratch, commit)
    try:
        patches = upstream_bound(load_patches(layout.patches))
        return apply_onto(scratch, patches, layout.overlay)
    finally:
        remove_worktree(layout.upstream, scratch)


CHECKLIST = """
What a person must still do before opening the pull request:
  [ ] Read every commit above as a reviewer would; squash if upstream prefers one.
  [ ] Write the pull-request description yourself: what, why, how it was tested,
      and the benchmark numbers you measured.
  [ ] Disclose how the code was written (tools and AI assistance), as upstream's
      CONTRIBUTING asks.
  [ ] Push the branch to your fork and open the PR:
        git -C {tree} push <your-fork> HEAD:{branch}
This command never pushes and never writes a PR description.
"""


def upstream_branch(layout: Layout, onto: str, build: bool, jobs: int | None) -> int:
    prepare_upstream(layout)
    commit = resolve_ref(layout, onto)
    tree = layout.build / "upstream-branch"
    print(f"mlxr upstream-branch: {BRANCH} on {onto} ({commit[:12]}) in {tree}", flush=True)
    if (tree / ".git").exists():
        remove_worktree(layout.upstream, tree)
    git("worktree", "prune", cwd=layout.upstream)
    git("branch", "--force", BRANCH, commit, cwd=layout.upstream)
    tree.parent.mkdir(parents=True, exist_ok=True)
    git("worktree", "add", "--quiet", str(tree), BRANCH, cwd=layout.upstream)

    patches = [without_vendor_fields(p) for p in upstream_bound(load_patches(layout.patches))]
    outcomes = apply_onto(tree, patches, layout.overlay)
    report(outcomes, onto)
    if any(o.status == CONFLICT for o in outcomes):
        print("mlxr upstream-branch: conflicts; rebase the series first (see `bump`)")
        return 1

    print("mlxr upstream-branch: upstream's formatting checks", flush=True)
    changed = git("diff", "--name-only", f"{commit}..HEAD", cwd=tree).split()
    problems = check_formatting(tree, changed, layout.build / "format-venv")
    for problem in problems:
        print(f"mlxr upstream-branch: {problem}")

    failed = bool(problems)
    if build:
        failed |= not build_and_test(layout, tree, jobs)

    print("\nCommits on the branch:")
    print(git("log", "--reverse", "--format=  %h %s", f"{commit}..HEAD", cwd=tree), end="")
    print(CHECKLIST.format(tree=tree, branch=BRANCH.split("/", 1)[1]))
    return 1 if failed else 0


def build_and_test(layout: Layout, tree: Path, jobs: int | None) -> bool:
    wheel = build_wheel(layout, tree, layout.build / "upstream-branch-wheel", None, jobs=jobs)
    python = fresh_venv(layout.build / "upstream-branch-venv")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "MLXR_WHEEL": str(wheel)}
    print("mlxr upstream-branch: python/tests/test_fast.py and our op tests", flush=True)
    upstream_tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--rootdir={tree / 'python' / 'tests'}", "test_fast.py"],
        cwd=tree / "python" / "tests", env=env,
    ).returncode  # fmt: skip
    ours = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-m", "not vendor", str(layout.tests / "wheel")],
        cwd=layout.root, env=env,
    ).returncode  # fmt: skip
    return upstream_tests == 0 and ours == 0
