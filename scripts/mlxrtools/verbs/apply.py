"""`apply`: patches/ and overlay/ onto the pin, in build/mlx-src."""

from __future__ import annotations

from ..layout import Layout
from ..queue.tree import apply
from . import Result


def run(layout: Layout, force: bool) -> Result:
    applied = apply(layout, force=force)
    where = applied.tree.relative_to(layout.root)
    if applied.up_to_date:
        return Result(messages=(f"{where} is up to date",))
    return Result(messages=(f"{applied.patches} patches on {applied.pin[:12]} in {where}",))
