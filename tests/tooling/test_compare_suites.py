"""The GPU script's comparison of upstream's suite: ours against the baseline."""

import subprocess
import sys
from pathlib import Path

from mlxrtools.environment.upstream_suite import SuiteResult

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "device"))
from compare_suites import report  # noqa: E402


def test_suite_comparison_names_new_and_shared_failures():
    ours = SuiteResult(passed=10, skipped=1, failed=["a::x", "b::y"])
    baseline = SuiteResult(passed=9, skipped=1, failed=["a::x", "c::z"])
    text, new = report(ours, baseline)
    assert new == ["b::y"]
    assert "Failures both share: 1\n- a::x" in text
    assert "Failing only in the baseline: 1\n- c::z" in text


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
