"""`export`: patches/ and overlay/ again from the commits of build/mlx-src."""

from __future__ import annotations

from ..layout import Layout
from ..queue.tree import export
from . import Result


def run(layout: Layout, check_only: bool) -> Result:
    changes = tuple(export(layout, check_only=check_only))
    if check_only and changes:
        return Result(1, ("patches/ and overlay/ are out of date:",), changes)
    if check_only:
        where = layout.applied_tree.relative_to(layout.root)
        return Result(messages=(f"patches/ and overlay/ match {where}",))
    if changes:
        return Result(messages=("wrote patches/ and overlay/:",), listing=changes)
    return Result(messages=("nothing changed",))
