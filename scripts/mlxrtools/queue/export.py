"""Turn the commits of the applied tree back into patches/ and overlay/."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .git import git, show_bytes
from .patchfile import PatchMail, slug
from .series import read_series, render_series

# Fixed flags and config, so that export output depends on the commits alone.
_FORMAT_PATCH_CONFIG = (
    "-c",
    "core.abbrev=12",
    "-c",
    "diff.algorithm=myers",
    "-c",
    "diff.context=3",
    "-c",
    "diff.interHunkContext=0",
    "-c",
    "diff.noprefix=false",
    "-c",
    "diff.mnemonicPrefix=false",
    "-c",
    "diff.relative=false",
    "-c",
    "format.signature=",
)
_FORMAT_PATCH_FLAGS = (
    "--stdout",
    "--zero-commit",
    "--no-signature",
    "--no-numbered",
    "--stat=72",
    "--stat-graph-width=20",
    "--no-renames",
    "--no-color",
    "--subject-prefix=PATCH",
    "--no-thread",
    "--encode-email-headers",
    "-O/dev/null",
)


class ExportError(UserError):
    pass


@dataclass
class ExportResult:
    patches: dict[str, str] = field(default_factory=dict)  # name -> mail text
    overlay: dict[str, bytes] = field(default_factory=dict)  # tree path -> content
    overlay_modes: dict[str, bool] = field(default_factory=dict)  # path -> executable
    series: list[str] = field(default_factory=list)


def _changes(repo: Path, commit: str) -> list[tuple[str, str]]:
    out = git(
        "diff-tree", "--no-commit-id", "--no-renames", "-r", "--name-status", commit, cwd=repo
    )
    return [tuple(line.split("\t", 1)) for line in out.splitlines() if line]  # type: ignore[misc]


def export_commits(
    repo: Path,
    base: str,
    head: str,
    previous: dict[str, str] | None = None,
    today: str | None = None,
) -> ExportResult:
    """Export base..head. `previous` maps names to the current patch texts.

    A patch whose content is unchanged keeps its Last-Update; a changed one gets today's.
    """
    previous = previous or {}
    today = today or datetime.date.today().isoformat()
    merges = git("rev-list", "--merges", f"{base}..{head}", cwd=repo).split()
    if merges:
        raise ExportError(f"the applied tree has merge commits ({merges[0][:12]}): rebase it flat")
    result = ExportResult()
    for commit in git("rev-list", "--reverse", f"{base}..{head}", cwd=repo).split():
        changes = _changes(repo, commit)
        added = sorted(path for status, path in changes if status == "A")
        edited = [path for status, path in changes if status != "A"]
        if not edited:
            subject = git("log", "-1", "--format=%s", commit, cwd=repo).strip()
            raise ExportError(
                f"commit {commit[:12]} '{subject}' only adds files: every patch must edit "
                "an upstream file (fold its new files into the patch that registers them)"
            )
        text = git(
            *_FORMAT_PATCH_CONFIG,
            "format-patch",
            *_FORMAT_PATCH_FLAGS,
            "-1",
            commit,
            "--",
            *edited,
            cwd=repo,
        )
        mail = PatchMail.parse(text).with_field("Overlay", ", ".join(added) or None)
        name = slug(mail.subject)
        if name in result.patches:
            raise ExportError(f"two commits have the same subject: {mail.subject}")
        result.patches[name] = _dated(mail, previous.get(name), today).render()
        result.series.append(name)
        for path in added:
            result.overlay[path] = show_bytes(repo, commit, path)
            mode = git("ls-tree", commit, "--", path, cwd=repo).split()[0]
            result.overlay_modes[path] = mode == "100755"
    return result


def _dated(mail: PatchMail, old: str | None, today: str) -> PatchMail:
    """Keep Last-Update while the patch is unchanged; a changed patch is dated today."""
    if old is None:
        return mail if "Last-Update" in mail.fields else mail.with_field("Last-Update", today)
    kept = PatchMail.parse(old).fields.get("Last-Update")
    if kept and mail.with_field("Last-Update", kept).render() == old:
        return mail.with_field("Last-Update", kept)
    return mail.with_field("Last-Update", today)


def current_state(patches_dir: Path, overlay_dir: Path) -> ExportResult:
    state = ExportResult(series=read_series(patches_dir / "series"))
    for p in sorted(patches_dir.glob("*.patch")):
        state.patches[p.name] = p.read_text()
    if overlay_dir.exists():
        for f in sorted(overlay_dir.rglob("*")):
            if f.is_file():
                rel = f.relative_to(overlay_dir).as_posix()
                state.overlay[rel] = f.read_bytes()
                state.overlay_modes[rel] = bool(f.stat().st_mode & 0o111)
    return state


def _file_changes(prefix: str, want: dict, have: dict) -> list[str]:
    out = []
    for name in sorted(set(want) | set(have)):
        if name not in have:
            out.append(f"{prefix}/{name}: added")
        elif name not in want:
            out.append(f"{prefix}/{name}: removed")
        elif want[name] != have[name]:
            out.append(f"{prefix}/{name}: changed")
    return out


def differences(want: ExportResult, have: ExportResult) -> list[str]:
    """How `want` differs from `have`, one line per file."""
    out = ["patches/series: changed"] if want.series != have.series else []
    out += _file_changes("patches", want.patches, have.patches)
    out += _file_changes("overlay", want.overlay, have.overlay)
    for path in sorted(set(want.overlay) & set(have.overlay)):
        same_bytes = want.overlay[path] == have.overlay[path]
        if same_bytes and want.overlay_modes[path] != have.overlay_modes[path]:
            out.append(f"overlay/{path}: mode changed")
    return out


def write_state(result: ExportResult, patches_dir: Path, overlay_dir: Path) -> None:
    patches_dir.mkdir(parents=True, exist_ok=True)
    for stale in patches_dir.glob("*.patch"):
        if stale.name not in result.patches:
            stale.unlink()
    for name, text in result.patches.items():
        target = patches_dir / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    (patches_dir / "series").write_text(render_series(result.series))
    if overlay_dir.exists():
        for f in sorted(overlay_dir.rglob("*"), reverse=True):
            rel = f.relative_to(overlay_dir).as_posix()
            if f.is_file() and rel not in result.overlay:
                f.unlink()
            elif f.is_dir() and not any(f.iterdir()):
                f.rmdir()
    for rel, data in result.overlay.items():
        target = overlay_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
        target.chmod(0o755 if result.overlay_modes[rel] else 0o644)
