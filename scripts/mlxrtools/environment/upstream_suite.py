"""Upstream's python/tests against the patched wheel and an unpatched baseline."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..layout import Layout, cache_home
from ..progress import detail, say
from ..queue.git import add_worktree, head, submodule_pin
from .build import BuildOptions, build_wheel, cmake_args, portable
from .venv import SUITE_REQUIREMENTS, TEST_REQUIREMENTS, fresh_venv, install_as_is, run_python

# Bump when the meaning of a stored result changes, so stale caches are not read.
RESULT_FORMAT = 2


@dataclass
class SuiteResult:
    passed: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)  # failures and errors, by test id

    @property
    def total(self) -> int:
        return self.passed + self.skipped + len(self.failed)


def _module_path(classname: str) -> str:
    """test_fast.TestFast, whichever tree (patched or pristine) the suite ran from."""
    return re.sub(r"^.*?\btests\.(?=test_)", "", classname)


def _case_id(case: ET.Element) -> str:
    return f"{_module_path(case.get('classname') or '')}::{case.get('name')}"


def junit_test_ids(path: Path) -> set[str]:
    """Every test the XML has a result for, named as parse_junit names failures."""
    return {_case_id(case) for case in ET.parse(path).getroot().iter("testcase")}


def parse_junit(path: Path) -> SuiteResult:
    result = SuiteResult()
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = _case_id(case)
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed.append(test_id)
        elif case.find("skipped") is not None:
            result.skipped += 1
        else:
            result.passed += 1
    result.failed.sort()
    return result


def upstream_pytest(tests_dir: Path, *args: str) -> list[str]:
    """pytest's arguments for upstream's tests: their folder is its own rootdir, so
    that no ini file or cache of ours applies to them."""
    return ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={tests_dir}", *args]


def run_suite(python: Path, tests_dir: Path, junit: Path, label: str) -> SuiteResult:
    say(f"upstream python/tests against the {label} wheel")
    junit.parent.mkdir(parents=True, exist_ok=True)
    args = upstream_pytest(tests_dir, "--no-header", "-o", "addopts=", f"--junitxml={junit}", ".")
    proc = run_python(python, *args, cwd=tests_dir, env={"PYTHONPATH": None}, capture=True)
    if not junit.exists():
        raise UserError(
            f"upstream suite did not run ({label}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    result = parse_junit(junit)
    detail(
        f"{label}: {result.passed} passed, {len(result.failed)} failed, {result.skipped} skipped"
    )
    return result


def baseline_key(layout: Layout, options: str) -> str:
    pin = submodule_pin(layout.root)
    return hashlib.sha256(
        json.dumps([pin, options, sys.version_info[:2], SUITE_REQUIREMENTS, RESULT_FORMAT]).encode()
    ).hexdigest()[:24]


def baseline_result(layout: Layout, options: str, jobs: int | None) -> SuiteResult:
    """The unpatched build's suite result, from the per-user cache when its inputs match.

    `options` names the build options, which the baseline shares with the patched
    wheel (options_key).
    """
    pin = submodule_pin(layout.root)
    cache = cache_home() / "upstream-baseline"
    cached = cache / f"{baseline_key(layout, options)}.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        say(f"unpatched baseline from cache ({cached})")
        return SuiteResult(**data["result"])
    say("no cached baseline for this pin: building unpatched MLX")
    tree = layout.pristine_tree
    if not (tree / ".git").exists() or head(tree) != pin:
        add_worktree(layout.upstream, tree, pin)
    wheel = build_wheel(layout, tree, layout.baseline_wheels, None, BuildOptions(jobs=jobs))
    # The same requirements as the test venv, so that both runs see the same packages.
    python = fresh_venv(layout.baseline_venv, TEST_REQUIREMENTS)
    install_as_is(python, wheel)
    result = run_suite(
        python, tree / "python" / "tests", layout.results / "baseline.xml", "unpatched"
    )
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"pin": pin, "result": asdict(result)}, indent=1) + "\n")
    return result


def options_key(layout: Layout) -> str:
    """The build options of both wheels, without machine-specific paths."""
    return json.dumps(portable(cmake_args(layout, layout.applied_tree, "cpu"), layout))


def patched_result(layout: Layout, python: Path, wheel: Path) -> SuiteResult:
    """The patched suite result, cached while the wheel and its tests are unchanged."""
    tests = layout.applied_tree / "python" / "tests"
    digest = hashlib.sha256(wheel.read_bytes())
    for f in sorted(tests.rglob("*.py")):
        digest.update(f.read_bytes())
    digest.update(json.dumps([TEST_REQUIREMENTS, RESULT_FORMAT]).encode())
    cached = cache_home() / "upstream-patched" / f"{digest.hexdigest()[:24]}.json"
    if cached.exists():
        say(f"patched upstream-suite result from cache ({cached})")
        return SuiteResult(**json.loads(cached.read_text()))
    result = run_suite(python, tests, layout.results / "patched.xml", "patched")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(asdict(result), indent=1) + "\n")
    return result


def compare_with_baseline(layout: Layout, python: Path, wheel: Path, jobs: int | None) -> Path:
    """Upstream's suite against our wheel (installed in python) and the unpatched
    build; the comparison, which tests/test_upstream_suite.py reads, goes to the
    returned file."""
    patched = patched_result(layout, python, wheel)
    baseline = baseline_result(layout, options_key(layout), jobs)
    report = layout.results / "upstream-suite.json"
    report.write_text(json.dumps(compare(patched, baseline), indent=1) + "\n")
    return report


def compare(patched: SuiteResult, baseline: SuiteResult) -> dict[str, object]:
    new = sorted(set(patched.failed) - set(baseline.failed))
    return {
        "patched": asdict(patched),
        "baseline": asdict(baseline),
        "new_failures": new,
    }
