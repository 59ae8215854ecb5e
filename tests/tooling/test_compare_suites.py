"""The GPU script's comparison of upstream's suite: ours against the baseline."""

import subprocess
import sys
from pathlib import Path

import pytest
from mlxrtools.environment.upstream_suite import SuiteResult

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "device"))
from compare_suites import read_recheck, report  # noqa: E402
from recheck_suite import failed_runs  # noqa: E402
from run_suite import node_id  # noqa: E402


def test_suite_comparison_names_new_and_shared_failures():
    ours = SuiteResult(passed=10, skipped=1, failed=["a::x", "b::y"])
    baseline = SuiteResult(passed=9, skipped=1, failed=["a::x", "c::z"])
    text, new = report(ours, baseline)
    assert new == ["b::y"]
    assert "Failures both share: 1\n- a::x" in text
    assert "Failing only in the baseline: 1\n- c::z" in text


def test_a_failure_the_baseline_never_ran_is_not_compared_yet_rather_than_new():
    ours = SuiteResult(passed=10, failed=["a::x", "q::slow"])
    baseline = SuiteResult(passed=11)
    text, uncleared = report(ours, baseline, baseline_ran={"a::x", "a::ok"})
    assert uncleared == ["a::x", "q::slow"]
    assert "New failures: 1\n- a::x\n" in text
    assert "Not compared yet (no result in the baseline's run): 1\n- q::slow\n" in text


def test_compare_suites_exits_non_zero_on_a_new_failure(tmp_path):
    def junit(path: Path, failing: bool) -> Path:
        failure = "<failure message='x'/>" if failing else ""
        path.write_text(
            f"<testsuites><testsuite><testcase classname='tests.test_a.T' name='t'>{failure}"
            "</testcase></testsuite></testsuites>"
        )
        return path

    script = ROOT / "scripts" / "device" / "compare_suites.py"
    args = [sys.executable, str(script)]
    ok = subprocess.run([*args, junit(tmp_path / "o.xml", False), junit(tmp_path / "b.xml", False)])
    bad = subprocess.run([*args, junit(tmp_path / "n.xml", True), tmp_path / "b.xml"])
    assert (ok.returncode, bad.returncode) == (0, 1)
    # A failure the baseline has no result for is not cleared either.
    (tmp_path / "e.xml").write_text("<testsuites><testsuite></testsuite></testsuites>")
    unrun = subprocess.run(
        [*args, tmp_path / "n.xml", tmp_path / "e.xml"], capture_output=True, text=True
    )
    assert unrun.returncode == 1
    assert "Not compared yet (no result in the baseline's run): 1\n- test_a.T::t" in unrun.stdout


def test_a_new_failure_that_fails_unpatched_when_run_again_is_flaky_in_both(tmp_path):
    ours = SuiteResult(passed=10, failed=["a::x", "b::y"])
    baseline = SuiteResult(passed=11)
    counts = tmp_path / "recheck.tsv"
    counts.write_text("a::x\t12\t6\t5\nb::y\t12\t12\t0\n")
    text, new = report(ours, baseline, read_recheck(counts))
    assert new == ["b::y"]
    assert "New failures: 1\n- b::y (run again 12 times: failed 12 with ours, 0 unpatched)" in text
    assert "both (failed only with ours here, and unpatched when run again): 1\n- a::x" in text


def test_recheck_names_the_pytest_node_of_a_junit_test_id():
    assert node_id("test_eval.TestEval::test_donation_for_noops") == (
        "test_eval.py::TestEval::test_donation_for_noops"
    )
    assert node_id("test_x::test_plain") == "test_x.py::test_plain"


def test_recheck_counts_failed_runs_and_refuses_a_test_that_cannot_run(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "class TestX:\n    def test_ok(self): pass\n    def test_bad(self): assert False\n"
    )
    (tmp_path / "test_broken.py").write_text("import not_a_module_anywhere\n")
    assert failed_runs("test_x.TestX::test_ok", tmp_path, tmp_path, 2) == 0
    assert failed_runs("test_x.TestX::test_bad", tmp_path, tmp_path, 2) == 2
    with pytest.raises(SystemExit, match="did not run"):
        failed_runs("test_broken::test_anything", tmp_path, tmp_path, 2)
