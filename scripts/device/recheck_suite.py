"""Run each new failure of a GPU suite comparison again, alone, against both wheels.

A test that fails with our wheel and passed once with the unpatched one may be a
regression or may be flaky in both: on the H200, upstream's
test_eval.py::TestEval::test_donation_for_noops failed in about half its runs
with either wheel. Each new failure runs --runs times in its own pytest process
against each wheel, and the counts of failed runs go to a tab-separated file
(test, runs, failed with ours, failed unpatched) that compare_suites.py --recheck
reads.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlxrtools.environment.upstream_suite import compare, parse_junit  # noqa: E402
from run_suite import node_id  # noqa: E402


def failed_runs(test_id: str, tests_dir: Path, site: Path, runs: int) -> int:
    """How many of `runs` runs failed. Only pytest's "tests failed" counts: a run
    that could not test (the wheel missing, the test not collected) ends the
    recheck, or every run of a regression would fail both wheels alike."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    failed = 0
    for _ in range(runs):
        proc = subprocess.run(
            [*command, f"--rootdir={tests_dir}", node_id(test_id)],
            cwd=tests_dir,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode not in (0, 1):
            sys.exit(
                f"recheck_suite.py: {test_id} did not run in {tests_dir} with {site} "
                f"(pytest exit code {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        failed += proc.returncode
    return failed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("ours", type=Path, help="JUnit XML of the suite against our wheel")
    p.add_argument("baseline", type=Path, help="the same against the unpatched wheel")
    p.add_argument("--ours-tests", type=Path, required=True, help="our tree's python/tests")
    p.add_argument("--ours-site", type=Path, required=True, help="where our wheel is installed")
    p.add_argument("--baseline-tests", type=Path, required=True, help="the unpatched tree's")
    p.add_argument("--baseline-site", type=Path, required=True, help="the unpatched wheel's")
    p.add_argument("--runs", type=int, default=12, help="runs of each test per wheel")
    p.add_argument("--out", type=Path, required=True, help="the tab-separated counts to write")
    args = p.parse_args()
    new = compare(parse_junit(args.ours), parse_junit(args.baseline))["new_failures"]
    lines = []
    for test_id in new:
        ours = failed_runs(test_id, args.ours_tests, args.ours_site, args.runs)
        baseline = failed_runs(test_id, args.baseline_tests, args.baseline_site, args.runs)
        print(f"{test_id}: failed {ours} of {args.runs} runs with ours, {baseline} unpatched")
        lines.append(f"{test_id}\t{args.runs}\t{ours}\t{baseline}\n")
    args.out.write_text("".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
