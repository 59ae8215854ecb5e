"""scripts/device/run_suite.py: which tests run, and how PTX caches are shared."""

import os
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "device"))

import run_suite  # noqa: E402
from mlxrtools.environment.upstream_suite import junit_test_ids  # noqa: E402
from run_suite import chunks, link_new, select, suite_id  # noqa: E402

IDS = [
    "test_quantized.py::TestQuantized::test_qmm",
    "test_quantized.py::TestQuantized::test_qmv",
    "test_fast.py::TestFast::test_rms_norm",
    "test_ops.py::TestOps::test_add",
]


def test_select_keeps_only_and_drops_exclude() -> None:
    assert select(IDS, [], []) == IDS
    assert select(IDS, ["test_quantized.py"], []) == IDS[:2]
    assert select(IDS, [], ["test_quantized.py"]) == IDS[2:]
    assert select(IDS, ["test_fast.py", "test_ops.py"], ["test_ops.py"]) == [IDS[2]]


def test_chunks_of_a_selection_keep_files_apart() -> None:
    out = chunks(select(IDS, [], ["test_ops.py"]), 2, ["test_fast.py"], {})
    assert [c.test_ids for c in out] == [[IDS[2]], IDS[:2]]


def test_select_and_first_take_single_tests_as_well_as_files() -> None:
    qmv = "test_quantized.py::TestQuantized::test_qmv"
    ids = [*IDS, f"{qmv}_wide", f"{qmv}[bits=4]"]
    # test_qmv names itself and its parameters, not test_qmv_wide.
    assert select(ids, [qmv], []) == [IDS[1], f"{qmv}[bits=4]"]
    assert select(ids, ["test_quantized.py"], [qmv]) == [IDS[0], f"{qmv}_wide"]
    out = chunks(select(ids, ["test_quantized.py"], []), 1, [f"{qmv}_wide", qmv], {})
    assert [c.test_ids for c in out] == [[f"{qmv}_wide"], [IDS[1]], [f"{qmv}[bits=4]"], [IDS[0]]]


def test_link_new_shares_files_without_replacing_any(tmp_path: Path) -> None:
    cache, pool = tmp_path / "cache", tmp_path / "pool"
    (cache / "long").mkdir(parents=True)
    pool.mkdir()
    (cache / "a.ptx").write_text("a")
    (cache / "long" / "b.ptx").write_text("b")
    (pool / "a.ptx").write_text("pool's a")
    assert link_new(cache, pool) == 1
    assert (pool / "long" / "b.ptx").read_text() == "b"
    assert (pool / "a.ptx").read_text() == "pool's a"
    assert (pool / "long" / "b.ptx").stat().st_ino == (cache / "long" / "b.ptx").stat().st_ino
    assert link_new(cache, pool) == 0
    other = tmp_path / "other"
    other.mkdir()
    assert link_new(pool, other) == 2
    assert sorted(p.name for p in other.rglob("*.ptx")) == ["a.ptx", "b.ptx"]


def test_resume_skips_the_tests_an_earlier_xml_recorded(tmp_path: Path) -> None:
    junit = tmp_path / "earlier.xml"
    junit.write_text(
        '<testsuite><testcase classname="test_quantized.TestQuantized" name="test_qmm"/>'
        '<testcase classname="test_ops.TestOps" name="test_sub"/></testsuite>'
    )
    have = junit_test_ids(junit)
    assert [t for t in IDS if suite_id(t) not in have] == [IDS[1], IDS[2], IDS[3]]
    assert suite_id("sub/test_x.py::test_plain") == "sub.test_x::test_plain"


def write_kernel(cache: Path, name: str, age: float, suffixes: tuple[str, ...]) -> None:
    """A kernel's cache files, as MLX writes them, last written age seconds ago."""
    moment = time.time() - age
    for suffix in suffixes:
        path = cache / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}{suffix}")
        os.utime(path, (moment, moment))


def test_a_stopped_worker_shares_only_the_kernels_it_wrote_whole(tmp_path: Path) -> None:
    cache, pool = tmp_path / "cache", tmp_path / "pool"
    pool.mkdir()
    whole = (".ptx", ".txt", ".cu")
    write_kernel(cache, "qmm_done", 60, whole)
    write_kernel(cache, "long/qmv_done", 60, whole)
    write_kernel(cache, "qmm_writing", 0, whole)  # written as the worker stopped
    write_kernel(cache, "qmm_half", 60, (".ptx", ".txt"))  # its source never written
    assert link_new(cache, pool, settled_before=time.time() - 5) == 6
    assert sorted(str(p.relative_to(pool)) for p in pool.rglob("*") if p.is_file()) == [
        "long/qmv_done.cu",
        "long/qmv_done.ptx",
        "long/qmv_done.txt",
        "qmm_done.cu",
        "qmm_done.ptx",
        "qmm_done.txt",
    ]
    assert link_new(cache, pool) == 5  # a worker that finished shares everything


FAKE_TESTS = {
    "test_fast_kernel.py": """
import os
from pathlib import Path


def test_compiles_one_kernel():
    cache = Path(os.environ["MLX_PTX_CACHE_DIR"])
    for suffix in (".ptx", ".txt", ".cu"):
        (cache / f"fast{suffix}").write_text(suffix)
""",
    "test_slow_kernel.py": """
import os
import time
from pathlib import Path


def test_compiles_past_the_deadline():
    cache = Path(os.environ["MLX_PTX_CACHE_DIR"])
    for suffix in (".ptx", ".txt", ".cu"):
        (cache / f"early{suffix}").write_text(suffix)
    while True:  # a kernel being written when the deadline comes
        for suffix in (".ptx", ".txt", ".cu"):
            (cache / f"late{suffix}").write_text(suffix)
        time.sleep(0.05)
""",
}


def test_a_run_past_its_deadline_keeps_what_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    for name, text in FAKE_TESTS.items():
        (tests / name).write_text(text)
    pool, junit = tmp_path / "pool", tmp_path / "suite.xml"
    monkeypatch.setattr(run_suite, "SETTLED_SECONDS", 1.0)
    argv = ["run_suite.py", str(tests), "--junit", str(junit), "--log", str(tmp_path / "log")]
    argv += ["--pool", str(pool), "--workers", "2", "--chunk", "1", "--deadline", "5"]
    monkeypatch.setattr(sys, "argv", argv)
    assert run_suite.main() == 1  # a chunk was stopped
    assert "at the 5 s deadline 1 were stopped" in capsys.readouterr().out
    kernels = sorted(p.name for p in pool.iterdir())
    assert kernels == [f"{k}{s}" for k in ("early", "fast") for s in (".cu", ".ptx", ".txt")]
    cases = {tc.get("name") for tc in ET.parse(junit).getroot().iter("testcase")}
    assert cases == {"test_compiles_one_kernel"}
    # Resumed from pytest's own XML, the finished test is not run again.
    again = tmp_path / "again.xml"
    argv[argv.index("--junit") + 1] = str(again)
    argv += ["--resume", str(junit), "--only", "test_fast_kernel.py"]
    monkeypatch.setattr(sys, "argv", argv)
    assert run_suite.main() == 0
    assert "1 results kept" in (out := capsys.readouterr().out) and ": 0 chunks" in out
    assert {tc.get("name") for tc in ET.parse(again).getroot().iter("testcase")} == cases
