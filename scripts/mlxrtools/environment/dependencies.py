"""The `deps` verb: upstream's pinned dependencies, listed or packed."""

from __future__ import annotations

from pathlib import Path

from ..layout import Layout, cache_home
from ..queue.tree import apply
from . import pinned_deps


def _tree(layout: Layout) -> Path:
    return apply(layout, quiet=True)


def where_from(pin: pinned_deps.Pin) -> str:
    cached = cache_home() / "deps" / pin.folder
    if (cached / ".mlxr-pin").is_file():
        return f"cached in {cached}"
    mirror = pinned_deps.mirror_dir(pin.url)
    if mirror is None:
        return "fetched from the network at build time"
    if pinned_deps.has_ref(mirror, pin.ref):
        return f"exported from the mirror {mirror} at build time"
    return f"MISSING: the mirror {mirror} has no {pin.ref}"


def list_pins(layout: Layout, backend: str) -> str:
    rows = [
        f"{pin.name:10} {pin.ref[:12]:13} {pin.url}\n{'':24}{where_from(pin)}"
        for pin in pinned_deps.pins_for(_tree(layout), backend)
    ]
    return "\n".join(rows)


def pack_pins(layout: Layout, backend: str, out: Path, nvtx_from_toolkit: bool) -> list[Path]:
    pins = pinned_deps.pins_for(_tree(layout), backend)
    if nvtx_from_toolkit:
        # The build then takes the toolkit's NVTX instead (`build --nvtx-from-toolkit`).
        pins = [p for p in pins if p.name != "nvtx3"]
    return pinned_deps.pack(pins, out, log=lambda m: print(f"mlxr deps: {m}", flush=True))
