"""Upstream's python/tests against the patched wheel and an unpatched baseline."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..layout import Layout, cache_home
from ..queue.apply import add_worktree
from ..queue.git import git, submodule_pin

SUITE_REQUIREMENTS = ("numpy", "pytest")
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


def parse_junit(path: Path) -> SuiteResult:
    result = SuiteResult()
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{_module_path(case.get('classname') or '')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed.append(test_id)
        elif case.find("skipped") is not None:
            result.skipped += 1
        else:
            result.passed += 1
    result.failed.sort()
    return result


def run_suite(python: Path, tests_dir: Path, junit: Path, label: str) -> SuiteResult:
    print(f"mlxr test: upstream python/tests against the {label} wheel", flush=True)
    junit.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    # The tests dir is its own rootdir, so no ini file of ours applies to it.
    pytest = ["pytest", "-q", "-p", "no:cacheprovider", "--no-header", f"--rootdir={tests_dir}"]
    proc = subprocess.run(
        [str(python), "-m", *pytest, "-o", "addopts=", f"--junitxml={junit}", "."],
        cwd=tests_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    if not junit.exists():
        raise RuntimeError(
            f"upstream suite did not run ({label}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    result = parse_junit(junit)
    print(
        f"mlxr test:   {label}: {result.passed} passed, {len(result.failed)} failed, "
        f"{result.skipped} skipped",
        flush=True,
    )
    return result


def baseline_key(layout: Layout, options: str) -> str:
    pin = submodule_pin(layout.root)
    return hashlib.sha256(
        json.dumps([pin, options, sys.version_info[:2], SUITE_REQUIREMENTS, RESULT_FORMAT]).encode()
    ).hexdigest()[:24]


def baseline_result(
    layout: Layout,
    options: str,
    make_venv: Callable[[Path], Path],
    build_wheel: Callable[[Path, Path], Path],
) -> SuiteResult:
    """The unpatched build's suite result, from the per-user cache when its inputs match.

    `options` names the build options, which the baseline shares with the patched
    wheel; make_venv(path) gives a python with the suite requirements and
    build_wheel(tree, out_dir) builds the pristine tree with those options.
    """
    pin = submodule_pin(layout.root)
    cache = cache_home() / "upstream-baseline"
    cached = cache / f"{baseline_key(layout, options)}.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        print(f"mlxr test: unpatched baseline from cache ({cached})", flush=True)
        return SuiteResult(**data["result"])
    print("mlxr test: no cached baseline for this pin: building unpatched MLX", flush=True)
    tree = layout.pristine_tree
    if not (tree / ".git").exists() or git("rev-parse", "HEAD", cwd=tree).strip() != pin:
        add_worktree(layout.upstream, tree, pin)
    wheel = build_wheel(tree, layout.build / "baseline-wheel")
    python = make_venv(layout.build / "baseline-venv")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    result = run_suite(
        python, tree / "python" / "tests", layout.results / "baseline.xml", "unpatched"
    )
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"pin": pin, "result": asdict(result)}, indent=1) + "\n")
    return result


def compare(patched: SuiteResult, baseline: SuiteResult) -> dict[str, object]:
    new = sorted(set(patched.failed) - set(baseline.failed))
    return {
        "patched": asdict(patched),
        "baseline": asdict(baseline),
        "new_failures": new,
    }
