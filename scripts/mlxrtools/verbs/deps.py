"""`deps`: upstream's pinned dependencies, listed with where each comes from, or packed."""

from __future__ import annotations

from pathlib import Path

from ..environment.dependencies import pack_pins, where_from
from ..environment.pinned_deps import pins_for
from ..layout import Layout
from ..queue.tree import apply
from . import Result


def run(layout: Layout, backend: str, pack: Path | None, nvtx_from_toolkit: bool) -> Result:
    tree = apply(layout).tree
    if pack is not None:
        archives = pack_pins(tree, backend, pack, nvtx_from_toolkit)
        return Result(messages=tuple(f"wrote {archive}" for archive in archives))
    rows = tuple(
        f"{pin.name:10} {pin.ref[:12]:13} {pin.url}\n{'':24}{where_from(pin)}"
        for pin in pins_for(tree, backend)
    )
    return Result(listing=rows)
