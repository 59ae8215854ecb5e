"""`check`: the series is sound; with --against, how it fares on another upstream ref."""

from __future__ import annotations

from ..layout import Layout
from ..queue.apply import CONFLICT
from ..queue.checks import check_series
from ..queue.upstream import check_against, outcome_rows
from . import Result


def run(layout: Layout, against: str | None = None) -> Result:
    if against:
        return run_against(layout, against)
    problems = tuple(check_series(layout))
    if problems:
        return Result(1, problems)
    return Result(messages=("series lint, overlay claims, exact apply and round trip all pass",))


def run_against(layout: Layout, ref: str) -> Result:
    outcomes = check_against(layout, ref)
    code = 1 if any(o.status == CONFLICT for o in outcomes) else 0
    return Result(code, (f"the upstream-bound series onto {ref}:",), outcome_rows(outcomes, ref))
