"""`upstream-branch`: the pull-request branch, formatted, built and tested; never pushed."""

from __future__ import annotations

from pathlib import Path

from ..environment.build import BuildOptions, build_wheel
from ..environment.formatting import check_formatting
from ..environment.upstream_suite import upstream_pytest
from ..environment.venv import fresh_venv, install_as_is, run_python
from ..layout import Layout
from ..progress import detail, say
from ..queue.apply import CONFLICT
from ..queue.upstream import BRANCH, make_branch, outcome_rows
from . import Result

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


def run(layout: Layout, onto: str, build: bool, jobs: int | None) -> Result:
    branch = make_branch(layout, onto)
    for row in outcome_rows(branch.outcomes, onto):
        detail(row.strip())
    if any(o.status == CONFLICT for o in branch.outcomes):
        return Result(1, ("conflicts; rebase the series first (see `bump`)",))
    say("upstream's formatting checks")
    problems = check_formatting(branch.tree, branch.changed_files(), layout.format_venv)
    failures = list(problems)
    if build and not _build_and_test(layout, branch.tree, jobs):
        failures.append("python/tests/test_fast.py or our op tests failed (above)")
    checklist = CHECKLIST.format(tree=branch.tree, branch=BRANCH.split("/", 1)[1])
    return Result(
        1 if failures else 0,
        tuple(failures),
        ("", "Commits on the branch:", *(f"  {c}" for c in branch.commits()), checklist),
    )


def _build_and_test(layout: Layout, tree: Path, jobs: int | None) -> bool:
    """Build the branch and run upstream's test_fast.py and tests/wheel (without
    the vendor tests) against it."""
    options = BuildOptions(jobs=jobs)
    wheel = build_wheel(layout, tree, layout.upstream_branch_wheels, None, options)
    python = fresh_venv(layout.upstream_branch_venv)
    install_as_is(python, wheel)
    env = {"MLXR_WHEEL": str(wheel)}
    say("python/tests/test_fast.py and our op tests")
    tests = tree / "python" / "tests"
    upstream = run_python(python, *upstream_pytest(tests, "test_fast.py"), cwd=tests, env=env)
    ours = run_python(
        python, "-m", "pytest", "-q", "-m", "not vendor", str(layout.tests / "wheel"),
        cwd=layout.root, env=env,
    )  # fmt: skip
    return upstream.returncode == 0 and ours.returncode == 0
