"""Upstream's own tests show no failure that the unpatched build does not also have."""

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def comparison() -> dict:
    results = os.environ.get("MLXR_RESULTS")
    path = Path(results or "build/results") / "upstream-suite.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: run the suite with `python3 scripts/mlxr.py test`")
    return json.loads(path.read_text())


def test_no_new_upstream_failures(comparison: dict) -> None:
    assert comparison["new_failures"] == []


def test_patched_suite_ran_our_upstream_tests(comparison: dict) -> None:
    patched = comparison["patched"]
    assert patched["passed"] > 0
    # The series adds tests to test_fast.py; the baseline cannot have them.
    assert patched["passed"] + patched["skipped"] + len(patched["failed"]) > (
        comparison["baseline"]["passed"]
        + comparison["baseline"]["skipped"]
        + len(comparison["baseline"]["failed"])
    )
