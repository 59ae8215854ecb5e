"""`test`: build if needed, install into a fresh venv, run every test (or one tier)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..environment.build import BuildOptions, build
from ..environment.upstream_suite import compare_with_baseline
from ..environment.venv import (
    LIGHT_REQUIREMENTS,
    fresh_venv,
    install_as_is,
    install_wheel,
    kept_venv,
    run_python,
)
from ..layout import Layout
from ..progress import say
from ..queue.git import ensure_submodule
from . import Result


@dataclass(frozen=True)
class Tier:
    paths: tuple[str, ...]  # under tests/; none: all of tests/
    needs_wheel: bool  # build and install the wheels first
    compares_suite: bool  # run upstream's suite against ours and the unpatched build


# The tiers of `test --only`, and everything, as CI runs it.
TIERS = {
    "tooling": Tier(("tooling",), needs_wheel=False, compares_suite=False),
    "metal": Tier(("metal",), needs_wheel=False, compares_suite=False),
    "cuda": Tier(("cuda",), needs_wheel=False, compares_suite=False),
    "wheel": Tier(("wheel",), needs_wheel=True, compares_suite=False),
    "upstream": Tier(("test_upstream_suite.py",), needs_wheel=True, compares_suite=True),
}
EVERYTHING = Tier((), needs_wheel=True, compares_suite=True)


def run(layout: Layout, only: str | None, pytest_args: list[str], jobs: int | None) -> Result:
    tier = TIERS[only] if only else EVERYTHING
    targets = [layout.tests / p for p in tier.paths] or [layout.tests]
    if not tier.needs_wheel:
        # The light tiers read the pinned tree (its CMake, its headers).
        ensure_submodule(layout.root)
        python = kept_venv(layout.tooling_venv, LIGHT_REQUIREMENTS)
        return Result(_pytest(layout, python, targets, pytest_args, {}))
    built = build(layout, BuildOptions(jobs=jobs))
    say(f"fresh venv in {layout.test_venv.relative_to(layout.root)}")
    python = fresh_venv(layout.test_venv)
    install_wheel(python, built.wheel)
    if built.adoption_wheel:
        install_as_is(python, built.adoption_wheel)
    layout.results.mkdir(parents=True, exist_ok=True)
    if tier.compares_suite:
        compare_with_baseline(layout, python, built.wheel, jobs)
    env = {"MLXR_WHEEL": str(built.wheel), "MLXR_RESULTS": str(layout.results)}
    return Result(_pytest(layout, python, targets, pytest_args, env))


def _pytest(
    layout: Layout, python: Path, paths: list[Path], pytest_args: list[str], env: dict[str, str]
) -> int:
    args = [a for a in pytest_args if a != "--"]
    say("running " + " ".join(str(p.relative_to(layout.root)) for p in paths))
    targets = [str(p) for p in paths]
    return run_python(python, "-m", "pytest", *targets, *args, cwd=layout.root, env=env).returncode
