"""Compare two runs of upstream's python/tests (JUnit XML): ours against the
unpatched baseline, as `mlxr.py test` compares them on the CPU. Exits non-zero
on a failure that the baseline does not share, and on one the baseline has no
result for (its run stopped before the test): that failure is listed apart, as
not compared yet, rather than as new. With --recheck (recheck_suite.py's
counts), a new failure that also failed with the unpatched wheel when run again
is listed as flaky in both instead."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlxrtools.environment.upstream_suite import (  # noqa: E402
    SuiteResult,
    compare,
    junit_test_ids,
    parse_junit,
)


def read_recheck(path: Path) -> dict[str, tuple[int, int, int]]:
    """recheck_suite.py's counts: test -> (runs, failed with ours, failed unpatched)."""
    counts: dict[str, tuple[int, int, int]] = {}
    for line in path.read_text().splitlines():
        test_id, runs, ours, baseline = line.split("\t")
        counts[test_id] = (int(runs), int(ours), int(baseline))
    return counts


def report(
    ours: SuiteResult,
    baseline: SuiteResult,
    recheck: dict[str, tuple[int, int, int]] | None = None,
    baseline_ran: set[str] | None = None,
) -> tuple[str, list[str]]:
    """The Markdown report, and the failures not cleared: new ones, then those
    the baseline has no result for (when baseline_ran, its tests, is given)."""
    comparison = compare(ours, baseline)
    recheck = recheck or {}
    unshared = comparison["new_failures"]
    not_run = [t for t in unshared if baseline_ran is not None and t not in baseline_ran]
    flaky = [t for t in unshared if t not in not_run and recheck.get(t, (0, 0, 0))[2] > 0]
    new = [t for t in unshared if t not in not_run and t not in flaky]

    def runs(test_id: str) -> str:
        if test_id not in recheck:
            return ""
        n, with_ours, unpatched = recheck[test_id]
        return f" (run again {n} times: failed {with_ours} with ours, {unpatched} unpatched)"

    shared = sorted(set(ours.failed) & set(baseline.failed))
    fixed = sorted(set(baseline.failed) - set(ours.failed))
    lines = [
        "| wheel | passed | failed | skipped |",
        "| --- | ---: | ---: | ---: |",
        f"| ours | {ours.passed} | {len(ours.failed)} | {ours.skipped} |",
        f"| unpatched | {baseline.passed} | {len(baseline.failed)} | {baseline.skipped} |",
        "",
        f"New failures: {len(new)}",
        *[f"- {t}{runs(t)}" for t in new],
        f"Not compared yet (no result in the baseline's run): {len(not_run)}",
        *[f"- {t}" for t in not_run],
        f"Flaky in both (failed only with ours here, and unpatched when run again): {len(flaky)}",
        *[f"- {t}{runs(t)}" for t in flaky],
        f"Failures both share: {len(shared)}",
        *[f"- {t}" for t in shared],
        f"Failing only in the baseline: {len(fixed)}",
        *[f"- {t}" for t in fixed],
    ]
    return "\n".join(lines) + "\n", new + not_run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("ours", type=Path, help="JUnit XML of the suite against our wheel")
    p.add_argument("baseline", type=Path, help="the same against the unpatched wheel")
    p.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    p.add_argument("--recheck", type=Path, help="recheck_suite.py's counts of runs again")
    args = p.parse_args()
    recheck = read_recheck(args.recheck) if args.recheck else None
    text, uncleared = report(
        parse_junit(args.ours), parse_junit(args.baseline), recheck, junit_test_ids(args.baseline)
    )
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 1 if uncleared else 0


if __name__ == "__main__":
    sys.exit(main())
