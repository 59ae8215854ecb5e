"""`bump`: move the mlx_upstream pin to another tag and carry the series over."""

from __future__ import annotations

from ..errors import UserError
from ..layout import Layout
from ..queue import carry
from . import Result


def run(layout: Layout, tag: str | None, resume: bool) -> Result:
    if resume:
        return _report(layout, carry.resume(layout))
    if not tag:
        raise UserError("name the tag to bump to, or pass --continue")
    return _report(layout, carry.start(layout, tag))


def _report(layout: Layout, carried: carry.Carried) -> Result:
    state = layout.bump_state.relative_to(layout.root)
    if carried.conflict:
        c = carried.conflict
        return Result(
            1,
            (f"{c.patch} conflicts with {carried.tag} in {c.detail}.",),
            (
                f"  1. cd {carried.tree} and resolve the conflicts (git status lists them)",
                "  2. git add <files> && git am --continue",
                "  3. python3 scripts/mlxr.py bump --continue",
                f"To give up instead: git am --abort, delete {state} and run "
                "`python3 scripts/mlxr.py apply --force`.",
            ),
        )
    return Result(
        0,
        (f"mlx_upstream now pins {carried.tag}; patches/ and overlay/ are re-exported:",),
        (
            *(f"  {line}" for line in carried.changes),
            "Review, run `python3 scripts/mlxr.py check` and the tests, then commit:",
            f"  git add mlx_upstream patches overlay && git commit -m 'Bump MLX to {carried.tag}'",
        ),
    )
