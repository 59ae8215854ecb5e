"""What `check` proves: the series is well-formed, applies exactly and round-trips."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..layout import Layout
from .apply import ApplyError, commit_series
from .export import ExportError, current_state, differences, export_commits
from .git import git, scratch_worktree
from .patchfile import MailError, PatchMail, lint_fields, overlay_paths, slug
from .registration import SITES, Site, missing_sites
from .series import load_patches, overlay_files, read_series
from .tree import prepare_upstream


def lint(layout: Layout, pin: str) -> list[str]:
    """The series file, each patch's name and fields, and the overlay files' claims."""
    problems: list[str] = []
    names = read_series(layout.series)
    on_disk = sorted(p.name for p in layout.patches.glob("*.patch"))
    for name in sorted(set(on_disk) - set(names)):
        problems.append(f"patches/{name} is not listed in patches/series")
    for name in sorted(set(names) - set(on_disk)):
        problems.append(f"patches/series names {name}, which does not exist")
    if len(set(names)) != len(names):
        problems.append("patches/series lists a patch twice")
    claims: dict[str, list[str]] = {}
    for name in names:
        if name not in on_disk:
            continue
        try:
            mail = PatchMail.parse((layout.patches / name).read_text())
        except MailError as err:
            problems.append(f"{name}: {err}")
            continue
        if slug(mail.subject) != name:
            problems.append(f"{name}: file name should be {slug(mail.subject)} (from its subject)")
        problems += [f"{name}: {p}" for p in lint_fields(mail.fields)]
        for path in overlay_paths(mail.fields):
            claims.setdefault(path, []).append(name)
    upstream_files = set(git("ls-tree", "-r", "--name-only", pin, cwd=layout.upstream).split("\n"))
    for path in overlay_files(layout.overlay):
        owners = claims.get(path, [])
        if len(owners) != 1:
            named = ", ".join(owners) or "none"
            problems.append(f"overlay/{path} is claimed by {len(owners)} patches ({named})")
        if path in upstream_files:
            problems.append(f"overlay/{path} shadows an upstream file: make it a patch")
    for path in sorted(set(claims) - set(overlay_files(layout.overlay))):
        problems.append(f"Overlay: field names {path}, which is not in overlay/")
    return problems


def round_trip(layout: Layout, pin: str, sites: tuple[Site, ...] = SITES) -> list[str]:
    """Apply on a pristine tree, export, and compare byte for byte; then the sites."""
    with (
        tempfile.TemporaryDirectory(prefix="mlxr-check-") as tmp,
        scratch_worktree(layout.upstream, Path(tmp) / "tree", pin) as scratch,
    ):
        try:
            commit = commit_series(scratch, load_patches(layout.patches), layout.overlay)
            have = current_state(layout.patches, layout.overlay)
            want = export_commits(scratch, pin, commit, previous=have.patches)
        except (ApplyError, ExportError) as err:
            return [str(err)]
        problems = [
            f"round trip: {d} (a patch that applies with an offset or a stale export)"
            for d in differences(want, have)
        ]
        return problems + [
            f"{site.path} lacks RMSNormFused ({site.why})" for site in missing_sites(scratch, sites)
        ]


def check_series(layout: Layout, sites: tuple[Site, ...] = SITES) -> list[str]:
    """Every problem `check` finds; none means the series is sound."""
    pin = prepare_upstream(layout)
    return lint(layout, pin) or round_trip(layout, pin, sites)
