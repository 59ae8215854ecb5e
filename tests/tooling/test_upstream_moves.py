"""check --against and bump on a throwaway upstream that moves on."""

from pathlib import Path

import pytest
from conftest import run_git
from mlxrtools.errors import UserError
from mlxrtools.layout import Layout
from mlxrtools.queue.apply import CLEAN, CONFLICT, MERGED
from mlxrtools.queue.checks import check_series
from mlxrtools.queue.git import submodule_pin
from mlxrtools.queue.series import load_patches, upstream_bound, without_vendor_fields
from mlxrtools.queue.upstream import check_against
from mlxrtools.verbs import bump


def upstream_commit(upstream: Path, edit, tag: str | None = None) -> str:  # type: ignore[no-untyped-def]
    edit(upstream)
    run_git("commit", "-q", "-a", "-m", "upstream: move on", cwd=upstream)
    if tag:
        run_git("tag", tag, cwd=upstream)
    return run_git("rev-parse", "HEAD", cwd=upstream).strip()


def prepend_header(repo: Path) -> None:
    f = repo / "src" / "core.txt"
    f.write_text("header\n" + f.read_text())


def rewrite_context(repo: Path) -> None:
    f = repo / "src" / "core.txt"
    f.write_text(f.read_text().replace("line 11\n", "line eleven\n"))


def statuses(layout: Layout, ref: str) -> dict[str, str]:
    return {o.patch: o.status for o in check_against(layout, ref)}


def test_check_against_reports_clean_patches(exported: Layout, upstream: Path) -> None:
    def unrelated(repo: Path) -> None:
        f = repo / "src" / "core.txt"
        f.write_text(f.read_text().replace("line 1\n", "line one\n"))

    upstream_commit(upstream, unrelated)
    assert set(statuses(exported, "main").values()) == {CLEAN}


def test_check_against_detects_a_conflict(exported: Layout, upstream: Path) -> None:
    upstream_commit(upstream, rewrite_context)
    result = statuses(exported, "main")
    assert result["core-add-the-fused-line.patch"] == CONFLICT
    assert result["registry-register-fused.patch"] == CLEAN


def test_check_against_reports_a_merge(exported: Layout, upstream: Path) -> None:
    # A changed line inside the hunk's context: only a three-way merge applies it.
    def near_change(repo: Path) -> None:
        f = repo / "src" / "core.txt"
        f.write_text(f.read_text().replace("line 13\n", "line thirteen\n"))

    upstream_commit(upstream, near_change)
    result = statuses(exported, "main")
    assert result["core-add-the-fused-line.patch"] == MERGED


def test_check_against_reports_an_overlay_file_upstream_added(
    exported: Layout, upstream: Path
) -> None:
    (upstream / "src" / "fused.txt").write_text("upstream's own\n")
    run_git("add", "src/fused.txt", cwd=upstream)
    run_git("commit", "-q", "-m", "upstream: add fused.txt", cwd=upstream)
    result = statuses(exported, "main")
    assert result["core-add-the-fused-line.patch"] == CONFLICT


def test_bump_moves_the_pin_and_reexports(exported: Layout, upstream: Path) -> None:
    run_git("add", "-A", cwd=exported.root)
    run_git("commit", "-q", "-m", "series", cwd=exported.root)
    target = upstream_commit(upstream, prepend_header, tag="v2")
    assert bump.run(exported, "v2", resume=False).code == 0
    assert submodule_pin(exported.root) == target
    assert check_series(exported, sites=()) == []
    patch = (exported.patches / "core-add-the-fused-line.patch").read_text()
    assert "@@ -9,6 +9,7 @@" in patch  # the hunk moved down by the new header line


def test_bump_stops_on_a_conflict_and_continues(exported: Layout, upstream: Path) -> None:
    run_git("add", "-A", cwd=exported.root)
    run_git("commit", "-q", "-m", "series", cwd=exported.root)
    target = upstream_commit(upstream, rewrite_context, tag="v2")
    assert bump.run(exported, "v2", resume=False).code == 1
    tree = exported.applied_tree
    with pytest.raises(UserError, match="still in progress"):
        bump.run(exported, None, resume=True)
    core = tree / "src" / "core.txt"
    lines = [f"line {i}" for i in range(1, 21)]
    lines[10] = "line eleven"
    lines.insert(10, "line 10.5")
    core.write_text("\n".join(lines) + "\n")
    run_git("add", "src/core.txt", cwd=tree)
    run_git("am", "--continue", cwd=tree)
    assert bump.run(exported, None, resume=True).code == 0
    assert submodule_pin(exported.root) == target
    assert (tree / "src" / "fused.txt").exists()
    assert check_series(exported, sites=()) == []
    assert "+line 10.5" in (exported.patches / "core-add-the-fused-line.patch").read_text()


def test_upstream_bound_copies_keep_their_overlay_files(exported: Layout) -> None:
    patches = [without_vendor_fields(p) for p in upstream_bound(load_patches(exported.patches))]
    first = patches[0]
    assert "Upstream-Plan" not in first.text and "Overlay:" not in first.text
    assert first.overlay == ["src/fused.txt"]
