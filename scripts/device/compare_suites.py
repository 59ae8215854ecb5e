"""Compare two runs of upstream's python/tests (JUnit XML): ours against the
unpatched baseline, as `mlxr.py test` compares them on the CPU. Exits non-zero
on a failure that the baseline does not share."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlxrtools.environment.upstream_suite import (  # noqa: E402
    SuiteResult,
    compare,
    parse_junit,
)


def report(ours: SuiteResult, baseline: SuiteResult) -> tuple[str, list[str]]:
    comparison = compare(ours, baseline)
    new = list(comparison["new_failures"])
    shared = sorted(set(ours.failed) & set(baseline.failed))
    fixed = sorted(set(baseline.failed) - set(ours.failed))
    lines = [
        "| wheel | passed | failed | skipped |",
        "| --- | ---: | ---: | ---: |",
        f"| ours | {ours.passed} | {len(ours.failed)} | {ours.skipped} |",
        f"| unpatched | {baseline.passed} | {len(baseline.failed)} | {baseline.skipped} |",
        "",
        f"New failures: {len(new)}",
        *[f"- {t}" for t in new],
        f"Failures both share: {len(shared)}",
        *[f"- {t}" for t in shared],
        f"Failing only in the baseline: {len(fixed)}",
        *[f"- {t}" for t in fixed],
    ]
    return "\n".join(lines) + "\n", new


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("ours", type=Path, help="JUnit XML of the suite against our wheel")
    p.add_argument("baseline", type=Path, help="the same against the unpatched wheel")
    p.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    args = p.parse_args()
    text, new = report(parse_junit(args.ours), parse_junit(args.baseline))
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
