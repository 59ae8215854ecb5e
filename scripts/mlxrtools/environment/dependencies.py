"""Where each of upstream's pinned dependencies comes from, for a build or a listing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..layout import Layout, cache_home
from ..progress import say
from . import pinned_deps
from .cuda_deps import toolkit_nvtx


@dataclass(frozen=True)
class DepsOptions:
    """Where upstream's pinned dependencies come from."""

    archives: Path | None = None  # a folder written by `mlxr.py deps --pack`
    nvtx_from_toolkit: bool = False


def pinned_sources(layout: Layout, tree: Path, backend: str, deps: DepsOptions) -> dict[str, Path]:
    """Each FetchContent dependency of the tree at upstream's pin, by name."""
    sources = {}
    for pin in pinned_deps.pins_for(tree, backend):
        if pin.name == "nvtx3" and deps.nvtx_from_toolkit:
            say(f"NVTX from the CUDA toolkit, not upstream's pin {pin.ref} (--nvtx-from-toolkit)")
            sources[pin.name] = toolkit_nvtx(layout.toolkit_nvtx)
        elif deps.archives is not None:
            sources[pin.name] = pinned_deps.unpack(pin, deps.archives, layout.deps)
        else:
            sources[pin.name] = pinned_deps.prepare(pin)
    return sources


def where_from(pin: pinned_deps.Pin) -> str:
    """Where a build here would take the pinned source from."""
    cached = cache_home() / "deps" / pin.folder
    if (cached / ".mlxr-pin").is_file():
        return f"cached in {cached}"
    mirror = pinned_deps.mirror_dir(pin.url)
    if mirror is None:
        return "fetched from the network at build time"
    if pinned_deps.has_ref(mirror, pin.ref):
        return f"exported from the mirror {mirror} at build time"
    return f"MISSING: the mirror {mirror} has no {pin.ref}"


def pack_pins(tree: Path, backend: str, out: Path, nvtx_from_toolkit: bool) -> list[Path]:
    """One archive per pinned source of the tree into out, for `build --deps-from out`."""
    pins = pinned_deps.pins_for(tree, backend)
    if nvtx_from_toolkit:
        # The build then takes the toolkit's NVTX instead (`build --nvtx-from-toolkit`).
        pins = [p for p in pins if p.name != "nvtx3"]
    return pinned_deps.pack(pins, out)
