"""The patches/series file and the patches it names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .patchfile import PatchMail, overlay_paths, strip_fields


@dataclass(frozen=True)
class Patch:
    name: str
    text: str
    # The overlay files the patch adds, when its text no longer says so (a
    # copy with the vendor fields stripped for upstream).
    claimed: tuple[str, ...] | None = None

    @property
    def mail(self) -> PatchMail:
        return PatchMail.parse(self.text)

    @property
    def overlay(self) -> list[str]:
        if self.claimed is not None:
            return list(self.claimed)
        return overlay_paths(self.mail.fields)


def read_series(series_file: Path) -> list[str]:
    if not series_file.exists():
        return []
    names = []
    for line in series_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def render_series(names: list[str]) -> str:
    return "".join(f"{name}\n" for name in names)


def load_patches(patches_dir: Path) -> list[Patch]:
    names = read_series(patches_dir / "series")
    missing = [n for n in names if not (patches_dir / n).is_file()]
    if missing:
        raise UserError(
            f"patches/series names missing patches: {', '.join(missing)}",
            fix="restore them, or run `export` from the applied tree",
        )
    return [Patch(n, (patches_dir / n).read_text()) for n in names]


def overlay_files(overlay_dir: Path) -> list[str]:
    if not overlay_dir.exists():
        return []
    return sorted(
        p.relative_to(overlay_dir).as_posix() for p in overlay_dir.rglob("*") if p.is_file()
    )


def upstream_bound(patches: list[Patch]) -> list[Patch]:
    return [p for p in patches if p.mail.fields.get("Upstream-Plan") == "upstream"]


def without_vendor_fields(patch: Patch) -> Patch:
    """The patch as upstream should see it: its message without our DEP-3 fields."""
    mail = patch.mail
    stripped = PatchMail(mail.headers, strip_fields(mail.body), mail.diff)
    return Patch(patch.name, stripped.render(), claimed=tuple(patch.overlay))
