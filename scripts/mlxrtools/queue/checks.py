"""The `check` verb: the series is well-formed, applies exactly and round-trips."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..layout import Layout
from .apply import ApplyError, add_worktree, commit_series, remove_worktree
from .export import ExportError, current_state, differences, export_commits
from .git import git
from .patchfile import PatchMail, lint_fields, overlay_paths, slug
from .registration import SITES, Site, missing_sites
from .series import load_patches, overlay_files, read_series
from .tree import prepare_upstream


def lint(layout: Layout, pin: str) -> list[str]:
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
        except ValueError as err:
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
    """Apply on a pristine tree, export, and compare byte for byte."""
    with tempfile.TemporaryDirectory(prefix="mlxr-check-") as tmp:
        scratch = Path(tmp) / "tree"
        add_worktree(layout.upstream, scratch, pin)
        try:
            patches = load_patches(layout.patches)
            head = commit_series(scratch, patches, layout.overlay)
            have = current_state(layout.patches, layout.overlay)
            want = export_commits(scratch, pin, head, previous=have.patches)
            problems = [
                f"round trip: {d} (a patch that applies with an offset or a stale export)"
                for d in differences(want, have)
            ]
            problems += [
                f"{site.path} lacks RMSNormFused ({site.why})"
                for site in missing_sites(scratch, sites)
            ]
            return problems
        except (ApplyError, ExportError) as err:
            return [str(err)]
        finally:
            remove_worktree(layout.upstream, scratch)


def check(layout: Layout, sites: tuple[Site, ...] = SITES) -> list[str]:
    pin = prepare_upstream(layout)
    problems = lint(layout, pin)
    if not problems:
        problems = round_trip(layout, pin, sites)
    return problems
