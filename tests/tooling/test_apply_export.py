"""apply, export and check on a throwaway upstream."""

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import FIELDS, GIT_ENV, commit_in_tree, run_git, write
from mlxrtools.layout import Layout
from mlxrtools.queue.apply import ApplyError
from mlxrtools.queue.checks import check_series
from mlxrtools.queue.patchfile import PatchMail
from mlxrtools.queue.tree import apply, export

PATCH_1 = "core-add-the-fused-line.patch"
PATCH_2 = "registry-register-fused.patch"


def checked(layout: Layout) -> list[str]:
    return check_series(layout, sites=())


def test_export_writes_series_patches_and_overlay(exported: Layout) -> None:
    assert exported.series.read_text() == f"{PATCH_1}\n{PATCH_2}\n"
    assert (exported.overlay / "src" / "fused.txt").read_text() == "a new file\n"
    mail = PatchMail.parse((exported.patches / PATCH_1).read_text())
    assert mail.subject == "core: add the fused line"
    assert mail.fields["Overlay"] == "src/fused.txt"
    assert "Overlay" not in PatchMail.parse((exported.patches / PATCH_2).read_text()).fields
    # Added files live in overlay/, never in the patch.
    assert "b/src/fused.txt" not in (exported.patches / PATCH_1).read_text()
    assert "+line 10.5" in (exported.patches / PATCH_1).read_text()


def test_check_passes_and_export_check_is_clean(exported: Layout) -> None:
    assert checked(exported) == []
    assert export(exported, check_only=True) == []


def test_apply_then_export_is_byte_identical(exported: Layout) -> None:
    before = {p.name: p.read_bytes() for p in exported.patches.iterdir()}
    apply(exported, force=True)
    assert export(exported) == []
    assert {p.name: p.read_bytes() for p in exported.patches.iterdir()} == before


def test_apply_creates_one_commit_per_patch_on_the_pin(exported: Layout) -> None:
    import shutil

    shutil.rmtree(exported.applied_tree)
    run_git("worktree", "prune", cwd=exported.upstream)
    exported.applied_stamp.unlink()
    tree = apply(exported).tree
    log = run_git("log", "--format=%s", "refs/mlxr/base..HEAD", cwd=tree).splitlines()
    assert log == ["registry: register fused", "core: add the fused line"]
    files = run_git("show", "--name-only", "--format=", "HEAD~1", cwd=tree).split()
    assert sorted(files) == ["src/core.txt", "src/fused.txt"]


def test_apply_is_a_no_op_and_keeps_file_times(exported: Layout) -> None:
    tree = apply(exported, force=True).tree
    core, fused = tree / "src" / "core.txt", tree / "src" / "fused.txt"
    old = time.time() - 3600
    for f in (core, fused):
        os.utime(f, (old, old))
    assert apply(exported).up_to_date
    # Change one overlay file: only it is rewritten.
    (exported.overlay / "src" / "fused.txt").write_text("a changed file\n")
    assert not apply(exported).up_to_date
    assert fused.read_text() == "a changed file\n"
    assert fused.stat().st_mtime > old + 1
    assert core.stat().st_mtime == pytest.approx(old)


def test_apply_refuses_to_discard_unexported_commits(exported: Layout) -> None:
    tree = exported.applied_tree
    write(tree / "src" / "registry.txt", "changed\n")
    commit_in_tree(tree, f"registry: change\n\n{FIELDS}")
    (exported.overlay / "src" / "fused.txt").write_text("incoming change\n")
    with pytest.raises(ApplyError, match="not exported"):
        apply(exported)
    apply(exported, force=True)
    assert (tree / "src" / "registry.txt").read_text() == "alpha\nbeta\ngamma\nfused\n"


def test_export_check_reports_drift(exported: Layout) -> None:
    (exported.overlay / "src" / "fused.txt").write_text("edited by hand\n")
    assert export(exported, check_only=True) == ["overlay/src/fused.txt: changed"]
    assert (exported.overlay / "src" / "fused.txt").read_text() == "edited by hand\n"


def test_export_refuses_while_a_rebase_is_stopped(exported: Layout) -> None:
    tree = apply(exported, force=True).tree
    editor = {"GIT_SEQUENCE_EDITOR": "sed -i '1s/^pick/edit/'"}
    subprocess.run(
        ["git", "rebase", "-q", "-i", "refs/mlxr/base"],
        cwd=tree,
        check=True,
        capture_output=True,
        env={**os.environ, **GIT_ENV, **editor},
    )
    before = sorted(p.name for p in exported.patches.iterdir())
    with pytest.raises(ApplyError, match="rebase is in progress"):
        export(exported)
    assert sorted(p.name for p in exported.patches.iterdir()) == before
    run_git("rebase", "--continue", cwd=tree)
    assert export(exported) == []


def test_last_update_is_kept_unless_the_patch_changes(exported: Layout) -> None:
    def date(name: str) -> str:
        return PatchMail.parse((exported.patches / name).read_text()).fields["Last-Update"]

    tree = apply(exported, force=True).tree
    assert export(exported) == [] and date(PATCH_2) == "2026-01-02"
    registry = tree / "src" / "registry.txt"
    registry.write_text(registry.read_text() + "more\n")
    run_git("commit", "-q", "-a", "--amend", "--no-edit", cwd=tree)
    assert export(exported) == [f"patches/{PATCH_2}: changed"]
    import datetime

    assert date(PATCH_2) == datetime.date.today().isoformat()
    assert date(PATCH_1) == "2026-01-02"


def move_pin(layout: Layout, upstream: Path, edit) -> None:  # type: ignore[no-untyped-def]
    edit(upstream)
    run_git("commit", "-q", "-a", "-m", "upstream: change", cwd=upstream)
    run_git("fetch", "-q", "origin", cwd=layout.upstream)
    run_git("checkout", "-q", "origin/main", cwd=layout.upstream)
    run_git("add", "mlx_upstream", cwd=layout.root)


def test_check_rejects_a_patch_that_applies_with_an_offset(
    exported: Layout, upstream: Path
) -> None:
    def prepend(repo: Path) -> None:
        f = repo / "src" / "core.txt"
        f.write_text("header\nheader\n" + f.read_text())

    move_pin(exported, upstream, prepend)
    problems = checked(exported)
    assert any(PATCH_1 in p and "offset" in p for p in problems), problems


def test_check_rejects_a_patch_that_does_not_apply(exported: Layout, upstream: Path) -> None:
    def rewrite_context(repo: Path) -> None:
        f = repo / "src" / "core.txt"
        f.write_text(f.read_text().replace("line 11\n", "line eleven\n"))

    move_pin(exported, upstream, rewrite_context)
    problems = checked(exported)
    assert any(PATCH_1 in p and "does not apply" in p for p in problems), problems


def test_check_rejects_overlay_files_that_shadow_upstream(exported: Layout) -> None:
    text = (exported.patches / PATCH_2).read_text()
    mail = PatchMail.parse(text).with_field("Overlay", "src/registry.txt")
    (exported.patches / PATCH_2).write_text(mail.render())
    write(exported.overlay / "src" / "registry.txt", "shadow\n")
    assert any("shadows an upstream file" in p for p in checked(exported))


def test_check_rejects_unclaimed_and_doubly_claimed_overlay_files(exported: Layout) -> None:
    write(exported.overlay / "src" / "stray.txt", "nobody claims me\n")
    text = (exported.patches / PATCH_2).read_text()
    (exported.patches / PATCH_2).write_text(
        PatchMail.parse(text).with_field("Overlay", "src/fused.txt").render()
    )
    problems = checked(exported)
    assert any("stray.txt is claimed by 0 patches" in p for p in problems), problems
    assert any("fused.txt is claimed by 2 patches" in p for p in problems), problems


def test_check_lints_series_and_headers(exported: Layout) -> None:
    text = (exported.patches / PATCH_2).read_text()
    (exported.patches / PATCH_2).write_text(
        PatchMail.parse(text).with_field("Upstream-Plan", "maybe").render()
    )
    write(exported.patches / "unlisted.patch", text)
    problems = checked(exported)
    assert any("Upstream-Plan 'maybe'" in p for p in problems), problems
    assert any("unlisted.patch is not listed" in p for p in problems), problems
